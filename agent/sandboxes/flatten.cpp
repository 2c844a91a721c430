// Flatten: a paused sandbox's origin and CoW written out as a new template image, and the new
// image's digest derived from the origin's in O(changed).
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>

#include "agent/sandboxes/operations.hpp"
#include "dm/snapshot_format.hpp"

namespace wrenn::agent {

Result<TemplateInfo, Failure> flatten_sandbox(OperationContext& ctx, const EntryPtr& entry,
                                              const std::string& name) {
    Sandbox sb = ctx.table.record(entry);
    const std::string what = "flatten " + sb.id + " into template " + name;
    if (auto bad = check_name(name, "template", what)) {
        return *bad;
    }
    if (sb.state != SandboxState::Paused) {
        return failure(FailureKind::InvalidState, what, 0,
                       "the sandbox is running; pause it first so its CoW is stable");
    }
    // The new template grows on the templates filesystem; when that is the state filesystem,
    // it would eat the room the running sandboxes' CoW files need.
    if (ctx.store.same_filesystem(ctx.options.templates_dir)) {
        if (auto full = check_space(ctx.space, what)) {
            return *full;
        }
    }
    if (auto live = check_no_live_device(ctx.platform, sb.id, what, "flatten")) {
        return *live;
    }
    auto same_template = verify_template(ctx, sb, what);
    if (!same_template) {
        return same_template.error();
    }
    const std::string out = ctx.template_path(name);
    if (::access(out.c_str(), F_OK) == 0) {
        return failure(FailureKind::TemplateExists, what, 0, out + " exists; pick another name");
    }
    if (auto unusable = check_cow_usable(ctx.platform, sb, what)) {
        return *unusable;
    }
    // A loop origin is read straight from its image file (so it can be reflinked); a TCMU
    // origin only exists as a block device, attached for the copy.
    std::string origin_path = sb.origin.path;
    const bool needs_device = sb.origin.type == OriginSpec::Type::Tcmu;
    if (needs_device) {
        if (auto refused = check_tcmu(ctx.platform, sb.origin, what)) {
            return *refused;
        }
        auto origin = ctx.platform.acquire_origin(sb.origin);
        if (!origin) {
            return origin_failure(sb.origin, std::move(origin).error().within(what));
        }
        origin_path = origin->device;
    }
    auto result = ctx.platform.flatten(origin_path, sb.cow_path, out);
    if (needs_device) {
        ctx.platform.release_origin(sb.origin);
    }
    if (!result) {
        const FailureKind kind = result.error().code() == EEXIST ? FailureKind::TemplateExists
                                 : result.error().code() == 0    ? FailureKind::SnapshotInvalid
                                                                 : FailureKind::Internal;
        return Failure{kind, std::move(result).error().within(what)};
    }
    TemplateInfo made;
    made.name = name;
    made.path = out;
    made.size_bytes = result->size_bytes;
    // The new image's digest is the origin's lists with only the changed chunks hashed (they
    // were just written, so read from the page cache) and their groups rehashed: O(changed).
    // Without the origin's list (its digest still pending, or a TCMU origin) the new image is read
    // in the background and shows as pending.
    if (auto identity = ctx.platform.inspect_template(out)) {
        auto derived = Result<std::string>(Error("derive digest", ENOENT));
        if (same_template.value()) {
            const auto leaves =
                leaves_of_chunks(result->changed_chunks, result->chunk_bytes, identity->size_bytes);
            derived =
                ctx.digests.derive(sb.origin.path, *same_template.value(), out, *identity, leaves);
            if (!derived && derived.error().code() != ENOENT) {
                spdlog::warn("sandbox={} op=flatten {}; reading it in the background", sb.id,
                             derived.error().message());
            }
        }
        if (derived) {
            made.digest = *derived;
        } else {
            ctx.digests.request(out, *identity);
        }
    }
    return made;
}

}  // namespace wrenn::agent
