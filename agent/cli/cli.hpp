#pragma once

#include <chrono>
#include <cstddef>
#include <iosfwd>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "agent/platform/space.hpp"
#include "common/result.hpp"

namespace wrenn::agent {

struct ServeOptions {
    std::vector<std::string> listen{"unix:/run/wrenn/agent.sock"};
    std::string state_dir = "/var/lib/wrenn";
    std::string templates_dir;  // default: <state-dir>/templates
    std::string log_level = "info";
    std::string log_format = "text";
    std::optional<std::string> token_file;
    // --insecure-tcp: serve TCP without a token (only on a network that is private itself).
    bool insecure_tcp = false;
    std::size_t max_connections = 256;  // per listener
    // --auth-timeout: with a token, how long a connection may go without showing it.
    std::chrono::seconds auth_timeout{10};
    unsigned workers = 16;
    bool cleanup_stale = false;  // --cleanup-stale: clean up for boot and exit
    // TCMU origins the API may attach: configs beneath these folders (none: refused) ...
    std::vector<std::string> tcmu_config_dirs;
    // ... with these handlers.
    std::vector<std::string> tcmu_handlers{"overlaybd"};
    // --min-free and --critical-free on the state filesystem (space.hpp).
    SpacePolicy space;
    // --fork-max-stall: the longest a fork may hold a running source's I/O for its copy.
    std::chrono::milliseconds fork_max_stall{2000};
    // --max-import-bytes: the largest archive POST /sandboxes/import takes (0: no fixed cap;
    // each archive is bounded by its template's size plus 1% anyway).
    std::uint64_t max_import_bytes = 0;
    // --max-template-bytes: the largest image PUT /templates/{name} takes.
    std::uint64_t max_template_bytes = 256ull << 30;
    // --max-transfers: exports and imports streaming at once (beyond: 503).
    std::size_t max_transfers = 8;
    // --min-transfer-rate: bytes per second a transfer must average over each 30 s (0: none).
    std::uint64_t min_transfer_rate = 64 * 1024;
    // --shutdown-grace: how long SIGTERM waits for operations before it cuts transfers.
    std::chrono::milliseconds shutdown_grace{20000};
};

// What the command line asks for: serve (or --cleanup-stale), a subcommand that takes the rest
// of the arguments (flatten, tcmu), or text to print and an exit status (--help, --version,
// a usage error).
struct Subcommand {
    std::string name;
    std::vector<std::string> args;
};
struct PrintAndExit {
    std::string text;
    int status = 0;
};
using Command = std::variant<ServeOptions, Subcommand, PrintAndExit>;

Command parse_command_line(const std::vector<std::string>& args);

}  // namespace wrenn::agent
