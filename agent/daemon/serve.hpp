#pragma once

#include "agent/cli/cli.hpp"
#include "agent/platform/platform.hpp"

namespace wrenn::agent {

// The exit status of serve and --cleanup-stale when the state dir holds a file of a newer format
// than this agent reads (78, EX_CONFIG of sysexits.h): the unit does not restart on it, since a
// restart cannot help.
inline constexpr int kExitNewerFormat = 78;

// `wrenn-agent serve`: recovers state, serves the API until SIGINT/SIGTERM, then stops
// accepting, lets operations in flight finish and exits 0. Returns the exit status.
int run_serve(const ServeOptions& options);

// The same over any Platform (run_serve passes the LinuxPlatform); for benchmarks of the agent's
// own code over a simulated kernel.
int serve_with(const ServeOptions& options, Platform& platform);

// `wrenn-agent --cleanup-stale`: for boot. Returns 0 when everything was cleaned, else 1 (or
// kExitNewerFormat).
int run_cleanup_stale(const ServeOptions& options);

}  // namespace wrenn::agent
