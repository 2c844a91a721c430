#pragma once

// What every operation works over, on a sandbox's strand (agent/sandboxes) or on its own
// (agent/catalog): the kernel, the records, the table and the services.
#include <chrono>
#include <cstdint>
#include <string>

#include "agent/platform/metrics.hpp"
#include "agent/platform/platform.hpp"
#include "agent/platform/space.hpp"
#include "agent/state/state_store.hpp"
#include "agent/table/operation_runner.hpp"
#include "agent/table/sandbox_table.hpp"
#include "agent/table/suspensions.hpp"
#include "agent/templates/template_digests.hpp"
#include "agent/templates/template_guards.hpp"

namespace wrenn::agent {

struct SandboxOptions {
    std::string templates_dir;
    // The longest a fork may hold a running source's I/O suspended for its copy.
    std::chrono::milliseconds fork_max_stall{2000};
    // Exports and imports that may stream at once, each on a thread of its own.
    std::size_t max_transfers = 8;
    // The slowest a transfer may move, in bytes per second averaged over each window (0: none).
    std::uint64_t min_transfer_rate = 64 * 1024;
    std::chrono::milliseconds transfer_rate_window{30000};
    // The largest template image PUT /templates/{name} takes (--max-template-bytes).
    std::uint64_t max_template_bytes = 256ull << 30;
};

// What every operation works over: the kernel, the records, the table and the services.
struct OperationContext {
    Platform& platform;
    StateStore& store;
    SandboxTable& table;
    OperationRunner& runner;
    Suspensions& suspensions;
    TemplateDigests& digests;
    TemplateGuards& guards;
    Metrics& metrics;
    SandboxOptions options;
    SpaceWatcher* space = nullptr;  // none: space is not watched

    // <templates-dir>/<name>.img
    [[nodiscard]] std::string template_path(const std::string& name) const {
        return options.templates_dir + "/" + name + ".img";
    }
};

}  // namespace wrenn::agent
