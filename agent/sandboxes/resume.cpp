// Resume: the snapshot again over the same CoW, once the CoW and the template are checked and a
// stale device of the same name is gone.
#include <spdlog/spdlog.h>

#include <cerrno>

#include "agent/sandboxes/operations.hpp"
#include "dm/snapshot_format.hpp"

namespace wrenn::agent {

Result<Sandbox, Failure> resume_sandbox(OperationContext& ctx, const EntryPtr& entry) {
    Sandbox sb = ctx.table.record(entry);
    const std::string what = "resume " + sb.id;
    if (sb.state != SandboxState::Paused) {
        return failure(FailureKind::InvalidState, what, 0, "the sandbox is running");
    }
    if (auto missing = check_kernel(ctx.platform, what)) {
        return *missing;
    }
    if (auto full = check_space(ctx.space, what)) {
        return *full;
    }
    if (auto unusable = check_cow_usable(ctx.platform, sb, what)) {
        return *unusable;
    }
    // Before any device changes: the CoW means something only over the image it was made over.
    auto same_template = verify_template(ctx, sb, what);
    if (!same_template) {
        return same_template.error();
    }
    if (same_template.value()) {
        sb.origin.identity = *same_template.value();
    }
    // A device of the same name is stale (a crash between create and record, or someone
    // else's): it goes first, so the new one is built over exactly this CoW.
    auto info = ctx.platform.snapshot_info(sb.id);
    if (!info) {
        return internal(std::move(info).error().within(what));
    }
    if (info->has_value()) {
        auto foreign = held_by_another_state_dir(ctx.platform, sb.id);
        if (!foreign) {
            return internal(std::move(foreign).error().within(what));
        }
        if (*foreign) {
            return failure(FailureKind::InvalidState, what, 0,
                           "device " + dm::device_name(sb.id) +
                               " belongs to another wrenn-agent's state dir (its dm UUID carries "
                               "another tag), and device names are host-wide; stop or pause that "
                               "sandbox there, or destroy this one and create it under another id");
        }
        spdlog::warn("sandbox={} op=resume removing stale device first", sb.id);
        if (auto removed = ctx.platform.remove_snapshot(sb.id);
            !removed && removed.error().code() != ENXIO) {
            return removal_failure(
                std::move(removed).error().within(what + ": remove stale device"));
        }
    }
    // The allowlist may have changed since the create, and the config with it.
    if (auto refused = check_tcmu(ctx.platform, sb.origin, what)) {
        return *refused;
    }
    auto origin = ctx.platform.acquire_origin(sb.origin);
    if (!origin) {
        return origin_failure(sb.origin, std::move(origin).error().within(what));
    }
    if (sb.origin_size_bytes != 0 && origin->size_bytes != sb.origin_size_bytes) {
        ctx.platform.release_origin(sb.origin);
        return failure(FailureKind::TemplateChanged, what, 0,
                       "the origin is " + std::to_string(origin->size_bytes) +
                           " bytes now, the sandbox was made over " +
                           std::to_string(sb.origin_size_bytes) +
                           " bytes; put the original image back to use this sandbox again");
    }
    auto device =
        ctx.platform.create_snapshot(sb.id, origin->device, origin->size_bytes, sb.cow_path);
    if (!device) {
        ctx.platform.release_origin(sb.origin);
        return internal(std::move(device).error().within(what));
    }
    sb.state = SandboxState::Running;
    sb.device = *device;
    sb.cow_status = "active";
    sb.origin_device = origin->device;
    sb.origin_size_bytes = origin->size_bytes;
    sb.last_error.reset();
    sb.updated_at = utc_now();
    ctx.table.with(entry, [](Entry& e) { e.origin_held = true; });
    if (auto written = ctx.table.commit(entry, sb); !written) {
        // Running now, but the record says paused: the next start would remove the device as
        // stale. Say so; the sandbox is usable and the next pause rewrites the record.
        return internal(std::move(written).error().within(what + " (the device is up)"));
    }
    return sb;
}

}  // namespace wrenn::agent
