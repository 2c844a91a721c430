#include "agent/daemon/fd_limit.hpp"

#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <cerrno>

#include "common/error.hpp"

namespace wrenn::agent {

std::optional<std::string> fd_budget_problem(std::uint64_t limit, std::size_t listeners,
                                             std::size_t max_connections) {
    const std::uint64_t needed =
        static_cast<std::uint64_t>(listeners) * max_connections + kFdReserve;
    if (limit >= needed) {
        return std::nullopt;
    }
    return "the open-file limit " + std::to_string(limit) + " is below the " +
           std::to_string(needed) + " that " + std::to_string(listeners) + " listener(s) x " +
           std::to_string(max_connections) + " connections (--max-connections) plus " +
           std::to_string(kFdReserve) +
           " for the agent's own files need; raise LimitNOFILE= (ulimit -n) or lower "
           "--max-connections";
}

std::uint64_t raise_fd_limit(std::size_t listeners, std::size_t max_connections) {
    rlimit lim{};
    if (::getrlimit(RLIMIT_NOFILE, &lim) != 0) {
        spdlog::warn("getrlimit RLIMIT_NOFILE: {}", describe_errno(errno));
        return 0;
    }
    if (lim.rlim_cur < lim.rlim_max) {
        const rlim_t before = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        if (::setrlimit(RLIMIT_NOFILE, &lim) == 0) {
            spdlog::info("raised the open-file limit from {} to {}",
                         static_cast<std::uint64_t>(before),
                         static_cast<std::uint64_t>(lim.rlim_max));
        } else {
            spdlog::warn("raise the open-file limit to {}: {}",
                         static_cast<std::uint64_t>(lim.rlim_max), describe_errno(errno));
            lim.rlim_cur = before;
        }
    }
    const auto soft =
        lim.rlim_cur == RLIM_INFINITY ? UINT64_MAX : static_cast<std::uint64_t>(lim.rlim_cur);
    if (auto problem = fd_budget_problem(soft, listeners, max_connections)) {
        spdlog::warn("{}", *problem);
    }
    return soft;
}

}  // namespace wrenn::agent
