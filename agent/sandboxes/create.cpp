// Create: a new sandbox over a template (or a TCMU origin): the origin is acquired, the sparse
// CoW made, the snapshot built over both, and the record written last, so that until it exists
// a crash leaves an unfinished folder the next start removes together with its device.
#include <spdlog/spdlog.h>

#include <cerrno>
#include <random>

#include "agent/sandboxes/operations.hpp"
#include "dm/snapshot_format.hpp"

namespace wrenn::agent {

std::string new_sandbox_id() {
    static constexpr char kAlphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    thread_local std::mt19937_64 rng{std::random_device{}()};
    std::uniform_int_distribution<std::size_t> pick(0, sizeof kAlphabet - 2);
    std::string id = "sb-";
    for (int i = 0; i < 10; ++i) {
        id += kAlphabet[pick(rng)];
    }
    return id;
}

Result<Sandbox, Failure> create_sandbox(OperationContext& ctx, const EntryPtr& entry,
                                        const CreateRequest& request) {
    const std::string& id = request.id;
    const std::string what = "create " + id;
    if (auto missing = check_kernel(ctx.platform, what)) {
        return *missing;
    }
    if (auto full = check_space(ctx.space, what)) {
        return *full;
    }
    Sandbox sb;
    sb.id = id;
    // Held on the template's name until the record is written: a delete or upload of it waits.
    std::optional<TemplateGuards::Hold> hold;
    if (request.tcmu_origin) {
        sb.origin = *request.tcmu_origin;
    } else {
        std::string name = request.template_name;
        if (is_blocks_digest(name)) {
            // Whichever image has this content, whatever its name.
            auto found = find_template_by_digest(ctx, DigestSearch{name, 0, {}, false}, what);
            if (!found) {
                return found.error();
            }
            name = found->name;
        } else if (auto bad = check_name(name, "template", what)) {
            return *bad;
        }
        auto held = share_template(ctx, name, what);
        if (!held) {
            return held.error();
        }
        hold.emplace(std::move(held).value());
        sb.template_name = name;
        auto identity = identify_template(ctx, name, what);
        if (!identity) {
            return identity.error();
        }
        sb.origin = OriginSpec{
            OriginSpec::Type::Loop, ctx.template_path(name), {}, std::nullopt, identity.value()};
    }

    if (auto refused = check_tcmu(ctx.platform, sb.origin, what)) {
        return *refused;
    }
    auto origin = ctx.platform.acquire_origin(sb.origin);
    if (!origin) {
        return origin_failure(sb.origin, std::move(origin).error().within(what));
    }
    auto release_origin = [&] { ctx.platform.release_origin(sb.origin); };
    if (sb.origin.identity && origin->size_bytes != sb.origin.identity->served_bytes()) {
        // The loop was bound to this inode earlier, at another size: the image was rewritten in
        // place while sandboxes use it.
        release_origin();
        return failure(FailureKind::TemplateChanged, what, 0,
                       "template '" + sb.template_name + "' is " +
                           std::to_string(sb.origin.identity->size_bytes) +
                           " bytes but its shared loop serves " +
                           std::to_string(origin->size_bytes) +
                           ": it was rewritten in place while sandboxes use it; replace "
                           "templates by renaming a new file over them, never in place");
    }
    sb.origin_device = origin->device;
    sb.origin_size_bytes = origin->size_bytes;
    sb.cow_path = ctx.store.cow_path(id);
    sb.cow_size_bytes = dm::cow_size_for_origin(origin->size_bytes);

    if (auto files = ctx.store.create_sandbox_files(id, sb.cow_size_bytes); !files) {
        release_origin();
        const FailureKind kind =
            files.error().code() == EEXIST ? FailureKind::AlreadyExists : FailureKind::Internal;
        return Failure{kind, std::move(files).error().within(what)};
    }
    auto device = ctx.platform.create_snapshot(id, origin->device, origin->size_bytes, sb.cow_path);
    if (!device) {
        release_origin();
        if (auto removed = ctx.store.remove_sandbox(id); !removed) {
            spdlog::error("sandbox={} op=create cleanup failed: {}", id, removed.error().message());
        }
        return internal(std::move(device).error().within(what));
    }
    sb.device = *device;
    sb.cow_status = "active";
    sb.state = SandboxState::Running;
    sb.created_at = sb.updated_at = utc_now();

    // The record is written last: until it exists, a crash leaves an unfinished folder that
    // the next start removes together with its device.
    if (auto written = ctx.table.commit(entry, sb); !written) {
        if (auto removed = ctx.platform.remove_snapshot(id); !removed) {
            spdlog::error("sandbox={} op=create cleanup failed: {}", id, removed.error().message());
        }
        release_origin();
        (void)ctx.store.remove_sandbox(id);
        return internal(std::move(written).error().within(what));
    }
    ctx.table.with(entry, [](Entry& e) { e.origin_held = true; });
    return sb;
}

}  // namespace wrenn::agent
