#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

namespace wrenn::agent {

// Descriptors the agent keeps for its own work beside connections: records, CoW files, loop
// and dm control files, the worker pool's in-flight opens.
inline constexpr std::uint64_t kFdReserve = 1024;

// Why `limit` open files cannot hold `listeners` x `max_connections` connections plus
// kFdReserve, saying what to do; nullopt when it can.
std::optional<std::string> fd_budget_problem(std::uint64_t limit, std::size_t listeners,
                                             std::size_t max_connections);

// At start: raises the soft RLIMIT_NOFILE to the hard limit (connections past the soft limit
// would make the agent's own open() calls fail) and logs a warning when the connection cap
// still does not fit. Returns the soft limit now in force.
std::uint64_t raise_fd_limit(std::size_t listeners, std::size_t max_connections);

}  // namespace wrenn::agent
