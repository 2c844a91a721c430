// Which image a create uses, and whether a sandbox's template is still the image it was made
// over.
#include <spdlog/spdlog.h>

#include <cerrno>

#include "agent/catalog/catalog.hpp"

namespace wrenn::agent {

namespace {

// A template the agent will not use: its errno says why (see Platform::inspect_template).
Failure template_refused(const std::string& name, const std::string& path, Error error) {
    switch (error.code()) {
        case ENOENT:
            return failure(FailureKind::TemplateNotFound, error.action(), 0,
                           "no template '" + name + "' (looked for " + path + ")");
        case ELOOP:
        case EPERM:
        case EINVAL:
            return Failure{FailureKind::InvalidRequest, std::move(error)};
        default:
            return Failure{FailureKind::Internal, std::move(error)};
    }
}

}  // namespace

Result<TemplateIdentity, Failure> identify_template(OperationContext& ctx, const std::string& name,
                                                    const std::string& what) {
    const std::string path = ctx.template_path(name);
    auto identity = ctx.platform.inspect_template(path);
    if (!identity) {
        return template_refused(name, path, std::move(identity).error().within(what));
    }
    // Never waits for a digest: a version never seen is read in the background, and its digest
    // written into the records made over it once known (record_digest).
    identity->digest = ctx.digests.known_or_request(path, *identity);
    return *identity;
}

Result<std::optional<TemplateIdentity>, Failure> verify_template(OperationContext& ctx,
                                                                 const Sandbox& sb,
                                                                 const std::string& what) {
    if (sb.origin.type != OriginSpec::Type::Loop) {
        return std::optional<TemplateIdentity>{};
    }
    const std::string& path = sb.origin.path;
    const std::string label = "template '" + sb.template_name + "' (" + path + ")";
    const std::string restore =
        "; the sandbox's CoW is kept: put the original image back at that path to use it again";
    auto now = ctx.platform.inspect_template(path);
    if (!now) {
        if (now.error().code() == ENOENT) {
            return failure(FailureKind::TemplateChanged, what, 0, label + " is gone" + restore);
        }
        return template_refused(sb.template_name, path, std::move(now).error().within(what));
    }
    std::optional<TemplateIdentity> recorded = sb.origin.identity;
    if (recorded && recorded->digest.empty()) {
        // Made while its digest was pending: known by now if the background read finished.
        if (auto digest = ctx.digests.known(path, *recorded)) {
            recorded->digest = *digest;
        }
    }
    if (recorded && now->same_file_state(*recorded)) {
        if (recorded->digest.empty()) {
            ctx.digests.request(path, *recorded);
        }
        return recorded;
    }
    if (!recorded) {
        // A record from before template identities: the image as it is now becomes the one the
        // sandbox is taken to be made over. Nothing better is known.
        now->digest = ctx.digests.known_or_request(path, *now);
        spdlog::warn("sandbox={} {} had no recorded identity; recording its present state now",
                     sb.id, label);
        return std::optional<TemplateIdentity>{*now};
    }
    if (recorded->digest.empty()) {
        return failure(FailureKind::TemplateChanged, what, 0,
                       label + " changed (" + now->describe_change_from(*recorded) +
                           ") before the agent had read the version this sandbox was made over, "
                           "so nothing shows it holds the same bytes; using its CoW over other "
                           "bytes would corrupt the filesystem" +
                           restore);
    }
    // Same content in a new file state (a touch, a copy renamed over it) keeps the sandbox
    // usable: decided by the digest of the image now, in the algorithm the record names.
    const bool whole = !is_blocks_digest(recorded->digest);
    auto digest = whole ? ctx.digests.whole_sha256(path, *now) : ctx.digests.wait(path, *now);
    if (!digest) {
        return Failure{FailureKind::Internal, std::move(digest).error().within(what)};
    }
    TemplateIdentity current = *now;
    current.digest = *digest;
    if (current.size_bytes != recorded->size_bytes || current.digest != recorded->digest) {
        return failure(FailureKind::TemplateChanged, what, 0,
                       label + " is not the image this sandbox was made over (" +
                           current.describe_change_from(*recorded) +
                           "); using its CoW over other bytes would corrupt the filesystem" +
                           restore + " (" + recorded->digest + ")");
    }
    if (whole) {
        // The record moves on to the blocks digest once it is known (record_digest).
        if (auto blocks = ctx.digests.known_or_request(path, *now); !blocks.empty()) {
            current.digest = blocks;
        }
    }
    spdlog::info("sandbox={} {}: same content ({}), new file state ({}); identity updated", sb.id,
                 label, *digest, now->describe_change_from(*recorded));
    return std::optional<TemplateIdentity>{current};
}

// A template version's digest is known: each sandbox made over exactly that version without it
// gets it in its record, on its strand, so that it never races the sandbox's operations.
void record_digest(OperationContext& ctx, const std::string& path,
                   const TemplateIdentity& version) {
    auto lacks = [path, version](const Sandbox& sb) {
        const auto& id = sb.origin.identity;
        return sb.origin.type == OriginSpec::Type::Loop && sb.origin.path == path && id &&
               id->same_file_state(version) && !is_blocks_digest(id->digest);
    };
    // A create, fork or import in flight may be about to record this version without its
    // digest: its entry is not ready yet, and the job below runs on its strand after it.
    auto targets =
        ctx.table.select([&](const Entry& e) { return !e.gone && (!e.ready || lacks(e.record)); });
    for (const auto& target : targets) {
        ctx.runner.post(target, [&ctx, lacks, version](const EntryPtr& entry) {
            auto [gone, next] = ctx.table.with(
                entry, [](const Entry& e) { return std::make_pair(e.gone, e.record); });
            if (gone || !lacks(next)) {
                return;
            }
            next.origin.identity->digest = version.digest;
            if (auto written = ctx.table.commit(entry, next); !written) {
                // Memory has it; the next start finds it in the digest cache again.
                spdlog::warn("sandbox={} record template digest: {}", next.id,
                             written.error().message());
            } else {
                spdlog::debug("sandbox={} template digest recorded: {}", next.id, version.digest);
            }
        });
    }
}

}  // namespace wrenn::agent
