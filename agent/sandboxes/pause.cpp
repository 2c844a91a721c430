// Pause: the device goes and the CoW stays. A failure to remove the device is fatal to the
// pause: nothing is released, the sandbox stays running with its device, and the error is kept
// in its record.
#include <spdlog/spdlog.h>

#include <cerrno>

#include "agent/sandboxes/operations.hpp"
#include "dm/snapshot_format.hpp"

namespace wrenn::agent {

namespace {

SnapshotUsage::State usage_state_of(const Result<SnapshotUsage>& usage) {
    return usage ? usage->state : SnapshotUsage::State::Active;
}

}  // namespace

Result<Sandbox, Failure> pause_sandbox(OperationContext& ctx, const EntryPtr& entry) {
    Sandbox sb = ctx.table.record(entry);
    const std::string what = "pause " + sb.id;
    if (sb.state != SandboxState::Running) {
        return failure(FailureKind::InvalidState, what, 0, "the sandbox is already paused");
    }
    // Last look at the usage while the device is there; a snapshot the kernel invalidated is
    // still paused (its CoW is kept), and resume will refuse it.
    auto usage = ctx.platform.snapshot_usage(sb.id);
    if (usage) {
        sb.cow_allocated_bytes = usage->allocated_bytes;
    }

    // A failure to remove the device is fatal to the pause: nothing is released, the sandbox
    // stays running with its device, and the error is kept in its record.
    if (auto removed = ctx.platform.remove_snapshot(sb.id);
        !removed && removed.error().code() != ENXIO) {
        Failure f = removal_failure(std::move(removed).error().within(what));
        sb.last_error = f.error.message();
        sb.updated_at = utc_now();
        if (auto written = ctx.table.commit(entry, sb); !written) {
            spdlog::error("sandbox={} op=pause: {}", sb.id, written.error().message());
        }
        return f;
    }
    release_origin_of(ctx, entry, sb.origin);
    sb.state = SandboxState::Paused;
    sb.device.clear();
    sb.origin_device.clear();
    sb.cow_status.clear();
    sb.last_error.reset();
    // The snapshot's last writes went through the CoW loop into the page cache; a record that
    // says paused promises they are on disk (a flatten or a host crash comes next).
    if (auto synced = ctx.store.sync_file(sb.cow_path); !synced) {
        Error error = std::move(synced).error().within(what + " (the device is removed)");
        sb.last_error = error.message();
        sb.updated_at = utc_now();
        (void)ctx.table.commit(entry, sb);
        return internal(error);
    }
    if (usage_state_of(usage) == SnapshotUsage::State::Invalid ||
        usage_state_of(usage) == SnapshotUsage::State::Overflow) {
        sb.last_error =
            "the kernel invalidated this snapshot before the pause; it cannot be resumed";
    }
    sb.updated_at = utc_now();
    if (auto written = ctx.table.commit(entry, sb); !written) {
        return internal(std::move(written).error().within(what + " (the device is removed)"));
    }
    return sb;
}

}  // namespace wrenn::agent
