// The sandboxes' side of space on the state filesystem: suspending and resuming running devices
// for the SpaceWatcher (space.hpp). Refusing new work below --min-free
// is check_space(), and holding room for work in flight reserve_space().
//
// The watcher acts outside the sandboxes' strands, so that a long operation on one sandbox
// never delays the suspension that keeps every other snapshot valid. It holds and lets go of
// the devices through Suspensions, as fork and export do, so that none of them resumes a
// device another still holds; a device that goes away meanwhile (a pause or destroy) answers
// ENXIO, and SandboxTable::commit() drops every hold when the device is removed or made anew.
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include "agent/sandboxes/operations.hpp"

namespace wrenn::agent {

std::size_t suspend_for_space(OperationContext& ctx) {
    auto targets = ctx.table.select([](const Entry& e) {
        return e.ready && !e.gone && e.record.state == SandboxState::Running &&
               !e.held(SuspendReason::Space);
    });
    std::size_t suspended = 0;
    for (const auto& entry : targets) {
        const std::string id = ctx.table.with(entry, [](const Entry& e) { return e.record.id; });
        if (auto held = ctx.suspensions.hold(entry, SuspendReason::Space); !held) {
            if (held.error().code() != ENXIO) {  // ENXIO: paused or destroyed meanwhile
                spdlog::error("sandbox={} op=suspend-for-space {}", id, held.error().message());
            }
            continue;
        }
        ++suspended;
        spdlog::warn("sandbox={} op=suspend-for-space its I/O waits until space returns", id);
    }
    return suspended;
}

std::size_t resume_after_space(OperationContext& ctx) {
    auto targets = ctx.table.select([](const Entry& e) { return e.held(SuspendReason::Space); });
    std::size_t resumed = 0;
    for (const auto& entry : targets) {
        const std::string id = ctx.table.with(entry, [](const Entry& e) { return e.record.id; });
        // Its I/O runs again only if no fork or export holds it too; a failed resume is retried
        // by Suspensions, and reads show it meanwhile.
        if (ctx.suspensions.release(entry, SuspendReason::Space)) {
            ++resumed;
            if (ctx.table.with(entry, [](const Entry& e) { return e.suspended(); })) {
                spdlog::info(
                    "sandbox={} op=resume-after-space space let go; a fork or export "
                    "still holds its I/O",
                    id);
            } else {
                spdlog::info("sandbox={} op=resume-after-space its I/O runs again", id);
            }
        }
    }
    return resumed;
}

std::size_t suspended_for_space(const OperationContext& ctx) {
    return ctx.table
        .select([](const Entry& e) {
            return e.held(SuspendReason::Space) && !e.gone &&
                   e.record.state == SandboxState::Running;
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
