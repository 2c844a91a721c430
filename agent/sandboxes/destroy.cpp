// Destroy: the device, the origin reference, then the files; a device of another state dir is
// never touched.
#include <spdlog/spdlog.h>

#include <cerrno>
#include <utility>

#include "agent/sandboxes/operations.hpp"
#include "dm/snapshot_format.hpp"

namespace wrenn::agent {

// Lets go of the entry's origin reference if it holds one. The release itself (a TCMU detach
// can take seconds) runs outside the table's lock, which reads on the io_context take.
void release_origin_of(OperationContext& ctx, const EntryPtr& entry, const OriginSpec& origin) {
    if (ctx.table.with(entry, [](Entry& e) { return std::exchange(e.origin_held, false); })) {
        ctx.platform.release_origin(origin);
    }
}

Result<Done, Failure> destroy_sandbox(OperationContext& ctx, const EntryPtr& entry) {
    Sandbox sb = ctx.table.record(entry);
    const std::string what = "destroy " + sb.id;
    // Whatever the record says, a device of this name goes (a paused sandbox may have a stale
    // one), unless it is another state dir's: device names are host-wide.
    bool foreign = false;
    if (sb.state == SandboxState::Paused) {
        auto held = held_by_another_state_dir(ctx.platform, sb.id);
        if (!held) {
            return internal(std::move(held).error().within(what));
        }
        foreign = *held;
        if (foreign) {
            spdlog::info("sandbox={} op=destroy device {} is another state dir's; left alone",
                         sb.id, dm::device_name(sb.id));
        }
    }
    if (auto removed = foreign ? Result<void>(success()) : ctx.platform.remove_snapshot(sb.id);
        !removed && removed.error().code() != ENXIO) {
        Failure f = removal_failure(std::move(removed).error().within(what));
        sb.last_error = f.error.message();
        sb.updated_at = utc_now();
        (void)ctx.table.commit(entry, sb);
        return f;
    }
    release_origin_of(ctx, entry, sb.origin);
    if (auto removed = ctx.store.remove_sandbox(sb.id); !removed) {
        // The device is gone; the files stay for a retry of the destroy.
        sb.state = SandboxState::Paused;
        sb.device.clear();
        sb.origin_device.clear();
        sb.last_error = removed.error().message();
        (void)ctx.table.commit(entry, sb, SandboxTable::Write::MemoryOnly);
        return internal(std::move(removed).error().within(what));
    }
    ctx.table.remove(entry);
    return Done{};
}

}  // namespace wrenn::agent
