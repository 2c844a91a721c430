// Fork: a new sandbox from another's disk at one instant. The CoW file is the sandbox's disk
// state, so a copy of it over the same origin is the fork. A running source is suspended for
// the copy (device-mapper waits for its in-flight I/O, so the exception store on disk is
// complete: the copy is what a power cut at that instant would leave) and resumed at once.
// With FICLONE the copy costs O(extents), so the stall does not grow with the data written.
//
// Crash safety is create's: the child's record is written last, so a kill before it leaves an
// unfinished folder (and maybe a device) that the next start removes; a kill while the source
// is suspended leaves a suspended device that the next start finds and resumes.
#include <spdlog/spdlog.h>

#include "agent/sandboxes/operations.hpp"
#include "dm/snapshot_format.hpp"

namespace wrenn::agent {

Result<Done, Failure> make_sandbox_dir(OperationContext& ctx, const std::string& id,
                                       const std::string& what) {
    if (auto dir = ctx.store.create_sandbox_dir(id); !dir) {
        // A folder with no entry (a leftover) is refused as an id in use, never written into.
        const FailureKind kind =
            dir.error().code() == EEXIST ? FailureKind::AlreadyExists : FailureKind::Internal;
        return Failure{kind, std::move(dir).error().within(what)};
    }
    return Done{};
}

Result<std::unique_ptr<PendingCopy>, Failure> copy_source_cow(
    OperationContext& ctx, const EntryPtr& source, const Sandbox& from, const std::string& to,
    const std::string& what, SuspendReason reason) {
    if (from.state == SandboxState::Paused) {
        auto copied = ctx.platform.copy_cow(from.cow_path, to, std::nullopt);
        if (!copied) {
            return internal(std::move(copied).error().within(what));
        }
        return std::move(copied).value();
    }
    if (ctx.table.with(source, [](const Entry& e) { return e.held(SuspendReason::Space); })) {
        return failure(FailureKind::InsufficientStorage, what, ENOSPC,
                       "the source's I/O is suspended because the state filesystem is nearly "
                       "full; free space there and retry");
    }
    if (auto held = ctx.suspensions.hold(source, reason); !held) {
        return internal(std::move(held).error().within(what));
    }
    const auto start = std::chrono::steady_clock::now();
    auto copied = ctx.platform.copy_cow(from.cow_path, to, start + ctx.options.fork_max_stall);
    // Resumed only if no one else (the space watcher) holds it meanwhile.
    auto resumed = ctx.suspensions.release(source, reason);
    const std::chrono::duration<double> stall = std::chrono::steady_clock::now() - start;
    ctx.metrics.observe("fork_stall", stall, copied ? "ok" : "internal");
    spdlog::info("sandbox={} op={} source I/O stalled {:.1f} ms ({})", from.id, to_string(reason),
                 stall.count() * 1000, copied ? (*copied)->method() : "copy failed");
    if (!resumed) {
        return internal(Error(what, resumed.error().code(),
                              "the source's device " + dm::device_name(from.id) +
                                  " could not be resumed after the copy (" +
                                  resumed.error().message() + "); GET /sandboxes/" + from.id +
                                  " shows it as io_error"));
    }
    if (!copied) {
        if (copied.error().code() == ETIMEDOUT) {
            return failure(FailureKind::Unavailable, what, ETIMEDOUT,
                           "the copy of the CoW did not finish within --fork-max-stall " +
                               std::to_string(ctx.options.fork_max_stall.count()) +
                               " ms, so the source was resumed and nothing was made; a "
                               "filesystem with reflinks (XFS) copies in constant time");
        }
        return internal(std::move(copied).error().within(what));
    }
    return std::move(copied).value();
}

Result<Sandbox, Failure> fork_sandbox(OperationContext& ctx, const EntryPtr& source,
                                      const EntryPtr& child) {
    const Sandbox from = ctx.table.record(source);
    const std::string id = child->record.id;
    const std::string what = "fork " + from.id + " into " + id;
    if (auto missing = check_kernel(ctx.platform, what)) {
        return *missing;
    }
    // The copy takes at most the source CoW's allocated space (none with reflinks): held until
    // the fork ends, so that concurrent forks and transfers cannot together overshoot.
    auto reservation = reserve_space(ctx.space, allocated_bytes_of(from.cow_path), what);
    if (!reservation) {
        return reservation.error();
    }
    // The source's CoW must be usable as a snapshot, over the image it was made over.
    if (from.state == SandboxState::Paused) {
        if (auto live = check_no_live_device(ctx.platform, from.id, what, "fork")) {
            return *live;
        }
    }
    if (auto unusable = check_cow_usable(ctx.platform, from, what)) {
        return *unusable;
    }
    auto same_template = verify_template(ctx, from, what);
    if (!same_template) {
        return same_template.error();
    }
    if (auto refused = check_tcmu(ctx.platform, from.origin, what)) {
        return *refused;
    }

    Sandbox sb;
    sb.id = id;
    sb.template_name = from.template_name;
    sb.origin = from.origin;
    if (same_template.value()) {
        sb.origin.identity = *same_template.value();
    }
    sb.cow_path = ctx.store.cow_path(id);
    sb.cow_size_bytes = from.cow_size_bytes;
    sb.origin_size_bytes = from.origin_size_bytes;
    sb.forked_from = from.id;

    if (auto made = make_sandbox_dir(ctx, id, what); !made) {
        return made.error();
    }
    auto remove_files = [&] {
        if (auto removed = ctx.store.remove_sandbox(id); !removed) {
            spdlog::error("sandbox={} op=fork cleanup failed: {}", id, removed.error().message());
        }
    };
    {
        auto copy = copy_source_cow(ctx, source, from, sb.cow_path, what, SuspendReason::Fork);
        if (!copy) {
            remove_files();
            return copy.error();
        }
        // Named (fsync, rename, fsync of the folder) after the source runs again.
        if (auto named = copy.value()->commit(); !named) {
            copy.value().reset();
            remove_files();
            return internal(std::move(named).error().within(what));
        }
    }

    auto origin = ctx.platform.acquire_origin(sb.origin);
    if (!origin) {
        remove_files();
        return origin_failure(sb.origin, std::move(origin).error().within(what));
    }
    auto release_origin = [&] { ctx.platform.release_origin(sb.origin); };
    if (origin->size_bytes != sb.origin_size_bytes) {
        release_origin();
        remove_files();
        return failure(FailureKind::TemplateChanged, what, 0,
                       "the origin now serves " + std::to_string(origin->size_bytes) +
                           " bytes, the source was made over " +
                           std::to_string(sb.origin_size_bytes));
    }
    auto device = ctx.platform.create_snapshot(id, origin->device, origin->size_bytes, sb.cow_path);
    if (!device) {
        release_origin();
        remove_files();
        return internal(std::move(device).error().within(what));
    }
    sb.origin_device = origin->device;
    sb.device = *device;
    sb.cow_status = "active";
    sb.state = SandboxState::Running;
    sb.created_at = sb.updated_at = utc_now();
    if (auto written = ctx.table.commit(child, sb); !written) {
        if (auto removed = ctx.platform.remove_snapshot(id); !removed) {
            spdlog::error("sandbox={} op=fork cleanup failed: {}", id, removed.error().message());
        }
        release_origin();
        remove_files();
        return internal(std::move(written).error().within(what));
    }
    ctx.table.with(child, [](Entry& e) { e.origin_held = true; });
    return sb;
}

}  // namespace wrenn::agent
