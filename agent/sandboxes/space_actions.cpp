// The sandboxes' side of space on the state filesystem: suspending and resuming running devices
// for the SpaceWatcher (space.hpp). Refusing new work below --min-free is check_space().
//
// The watcher acts outside the sandboxes' strands, so that a long operation on one sandbox
// never delays the suspension that keeps every other snapshot valid. That is safe because
// suspend and resume are idempotent in the kernel and a device that goes away meanwhile (a
// pause or destroy) answers ENXIO: the flag on the entry is only what reads show, and
// SandboxTable::commit() clears it whenever the sandbox's device is removed or made anew.
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include "agent/sandboxes/operations.hpp"

namespace wrenn::agent {

std::size_t suspend_for_space(OperationContext& ctx) {
    auto targets = ctx.table.select([](const Entry& e) {
        return e.ready && !e.gone && e.record.state == SandboxState::Running && !e.io_suspended;
    });
    std::size_t suspended = 0;
    for (const auto& entry : targets) {
        const std::string id = ctx.table.with(entry, [](const Entry& e) { return e.record.id; });
        auto done = ctx.platform.suspend_snapshot(id);
        if (!done) {
            if (done.error().code() != ENXIO) {  // ENXIO: paused or destroyed meanwhile
                spdlog::error("sandbox={} op=suspend-for-space {}", id, done.error().message());
            }
            continue;
        }
        const bool running = ctx.table.with(entry, [](Entry& e) {
            const bool held = !e.gone && e.record.state == SandboxState::Running;
            e.io_suspended = e.io_suspended || held;
            return held;
        });
        if (running) {
            ++suspended;
            spdlog::warn("sandbox={} op=suspend-for-space its I/O waits until space returns", id);
        }
    }
    return suspended;
}

std::size_t resume_after_space(OperationContext& ctx) {
    auto targets = ctx.table.select([](const Entry& e) { return e.io_suspended; });
    std::size_t resumed = 0;
    for (const auto& entry : targets) {
        const std::string id = ctx.table.with(entry, [](const Entry& e) { return e.record.id; });
        auto done = ctx.platform.resume_snapshot(id);
        if (!done && done.error().code() != ENXIO) {
            // Kept flagged: the next poll tries again, and reads keep saying so.
            spdlog::error("sandbox={} op=resume-after-space {}", id, done.error().message());
            continue;
        }
        ctx.table.with(entry, [](Entry& e) { e.io_suspended = false; });
        if (done) {
            ++resumed;
            spdlog::info("sandbox={} op=resume-after-space its I/O runs again", id);
        }
    }
    return resumed;
}

std::size_t suspended_for_space(const OperationContext& ctx) {
    return ctx.table
        .select([](const Entry& e) {
            return e.io_suspended && !e.gone && e.record.state == SandboxState::Running;
        })
        .size();
}

std::vector<std::pair<std::string, std::uint64_t>> cow_disk_usage(const OperationContext& ctx) {
    std::vector<std::pair<std::string, std::uint64_t>> out;
    for (const auto& sb : ctx.table.list()) {
        struct stat st {};
        if (::stat(sb.cow_path.c_str(), &st) == 0) {
            out.emplace_back(sb.id, static_cast<std::uint64_t>(st.st_blocks) * 512);
        }
    }
    return out;
}

}  // namespace wrenn::agent
