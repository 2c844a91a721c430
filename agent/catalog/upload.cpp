// Upload: PUT /templates/{name}. The body becomes a temp file beside the templates, hashed as it
// is written, and only an image with the digest the client named becomes <name>.img.
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <cerrno>
#include <chrono>
#include <vector>

#include "agent/catalog/catalog.hpp"
#include "agent/platform/space.hpp"
#include "agent/table/checks.hpp"
#include "agent/transfer/rate_floor.hpp"
#include "flatten/image_copy.hpp"

namespace wrenn::agent {

namespace {

// Below this much free space on the templates filesystem an upload stops (507): checked every
// ImageReceiver::Hooks::room_every bytes written, so that one never fills it to the last byte.
constexpr std::uint64_t kKeepFree = 64ull << 20;

// The template `name` there already: 200 when it has the digest, 409 template_exists otherwise.
std::optional<Result<TemplateInfo, Failure>> already_there(OperationContext& ctx,
                                                           const UploadRequest& request,
                                                           const std::string& what) {
    const std::string path = ctx.template_path(request.name);
    auto identity = ctx.platform.inspect_template(path);
    if (!identity) {
        if (identity.error().code() == ENOENT) {
            return std::nullopt;
        }
        return failure(FailureKind::TemplateExists, what, EEXIST,
                       path + " exists and the agent refuses it (" + identity.error().message() +
                           "); remove it or pick another name");
    }
    // Usually known; else read now (this request is about these bytes).
    auto digest = ctx.digests.wait(path, *identity);
    if (!digest) {
        return Failure{FailureKind::Internal, std::move(digest).error().within(what)};
    }
    if (*digest != request.digest) {
        return failure(FailureKind::TemplateExists, what, EEXIST,
                       "template '" + request.name + "' exists with digest " + *digest + ", not " +
                           request.digest + "; delete it first (DELETE /templates/" + request.name +
                           ") or pick another name");
    }
    TemplateInfo info;
    info.name = request.name;
    info.path = path;
    info.size_bytes = identity->size_bytes;
    info.digest = *digest;
    info.allocated_bytes = allocated_bytes_of(path);
    info.existed = true;
    return info;
}

// Whether the templates filesystem has `bytes` free (and `keep` beyond them).
std::optional<Failure> short_of_room(OperationContext& ctx, std::uint64_t bytes, std::uint64_t keep,
                                     const std::string& what) {
    auto space = ctx.platform.free_space(ctx.options.templates_dir);
    if (!space) {
        return Failure{FailureKind::Internal, std::move(space).error().within(what)};
    }
    if (space->free_bytes < bytes + keep) {
        return failure(FailureKind::InsufficientStorage, what, ENOSPC,
                       human_bytes(space->free_bytes) + " free on " + ctx.options.templates_dir +
                           " (" + human_bytes(space->size_bytes) +
                           " filesystem), the image needs " + human_bytes(bytes) +
                           (keep > 0 ? " and " + human_bytes(keep) + " left" : "") +
                           "; free space there or upload it to another host");
    }
    return std::nullopt;
}

FailureKind kind_of(int code) {
    switch (code) {
        case EFBIG:
            return FailureKind::PayloadTooLarge;
        case ENOSPC:
        case EDQUOT:
            return FailureKind::InsufficientStorage;
        case EBADMSG:
            return FailureKind::InvalidImage;
        default:
            return FailureKind::Internal;
    }
}

}  // namespace

Result<TemplateInfo, Failure> upload_template(OperationContext& ctx, const UploadRequest& request,
                                              const ReadBody& read_body) {
    const std::string& name = request.name;
    const std::string what = "upload template " + name;
    const auto start = std::chrono::steady_clock::now();
    if (auto bad = check_name(name, "template", what)) {
        return *bad;
    }
    if (!is_blocks_digest(request.digest)) {
        return failure(FailureKind::InvalidRequest, what, EINVAL,
                       "?digest= is required: the image's \"blocks-sha256-4k:<64 hex>\" digest, as "
                       "GET /templates shows it on the host it comes from (or `wrenn-agent digest "
                       "FILE` prints it)");
    }
    auto hold = own_template(ctx, name, "uploaded", what);
    if (!hold) {
        return hold.error();
    }
    if (auto there = already_there(ctx, request, what)) {
        return std::move(*there);
    }
    if (request.form == ImageForm::Raw && request.content_length &&
        *request.content_length > ctx.options.max_template_bytes) {
        return failure(FailureKind::PayloadTooLarge, what, EFBIG,
                       "the image is " + std::to_string(*request.content_length) +
                           " bytes, more than --max-template-bytes (" +
                           std::to_string(ctx.options.max_template_bytes) + ")");
    }
    // Room for what comes, before the first byte: the body's length, or a stream's chunks.
    const bool on_state_fs = ctx.store.same_filesystem(ctx.options.templates_dir);
    SpaceReservation reservation;
    auto make_room = [&](std::uint64_t bytes) -> std::optional<Failure> {
        if (auto short_room = short_of_room(ctx, bytes, 0, what)) {
            return short_room;
        }
        if (on_state_fs) {
            // The running sandboxes' CoW files grow there too: keep it above --min-free.
            auto reserved = reserve_space(ctx.space, bytes, what);
            if (!reserved) {
                return reserved.error();
            }
            reservation = std::move(reserved).value();
        }
        return std::nullopt;
    };
    if (request.content_length) {
        if (auto short_room = make_room(*request.content_length)) {
            return *short_room;
        }
    }
    // The templates folder is the agent's own: a first upload onto a new host makes it (the
    // default, <state-dir>/templates, exists only once someone put a template there).
    if (::mkdir(ctx.options.templates_dir.c_str(), 0755) != 0 && errno != EEXIST) {
        return internal(
            errno_error("create the templates folder " + ctx.options.templates_dir).within(what));
    }
    auto out = flatten::PendingOutput::create(ctx.template_path(name), 0444);
    if (!out) {
        const FailureKind kind = out.error().code() == EEXIST ? FailureKind::TemplateExists
                                                              : kind_of(out.error().code());
        return Failure{kind, std::move(out).error().within(what)};
    }
    auto leaves = ctx.digests.new_leaf_file();
    if (!leaves) {
        return internal(std::move(leaves).error().within(what));
    }
    std::optional<Failure> refused;  // a refusal of ours from inside the receiver's hooks
    ImageReceiver::Hooks hooks;
    hooks.on_header = [&](const archive::Header& h) -> Result<void> {
        if (!request.content_length) {
            const std::uint64_t chunk_bytes = h.chunk_count * h.chunk_bytes;
            if (auto short_room = make_room(chunk_bytes)) {
                refused = *short_room;
                return refused->error;
            }
        }
        return {};
    };
    hooks.on_progress = [&](std::uint64_t) -> Result<void> {
        if (auto short_room = short_of_room(ctx, 0, kKeepFree, what)) {
            refused = *short_room;
            return refused->error;
        }
        return {};
    };
    ImageReceiver receiver(request.form, out->fd(), leaves->fd(), ctx.options.max_template_bytes,
                           std::move(hooks));
    auto fail = [&](Error error) {
        if (refused) {
            return *refused;
        }
        const FailureKind kind = kind_of(error.code());
        return Failure{kind, std::move(error).within(what)};
    };

    std::vector<std::byte> buffer(1 << 20);
    std::uint64_t received = 0;
    RateFloor floor(ctx.options.min_transfer_rate, ctx.options.transfer_rate_window);
    for (;;) {
        const auto waiting = RateFloor::Clock::now();
        auto n = read_body(buffer);
        const auto waited = RateFloor::Clock::now() - waiting;
        if (!n) {
            // The client went away, sent more than the server's limit, or stalled.
            const int code = n.error().code();
            return Failure{code == EFBIG ? FailureKind::PayloadTooLarge : FailureKind::InvalidImage,
                           Error(what, code,
                                 "the upload broke after " + std::to_string(received) +
                                     " bytes: " + n.error().message())};
        }
        if (*n == 0) {
            break;
        }
        received += *n;
        if (!floor.moved(*n, waited)) {
            return failure(FailureKind::TransferTooSlow, what, ETIMEDOUT,
                           "the upload was slower than --min-transfer-rate (" +
                               std::to_string(floor.bytes_per_second()) + " bytes/s over " +
                               std::to_string(floor.window().count() / 1000) + " s) after " +
                               std::to_string(received) + " bytes; send it over a faster link");
        }
        if (auto fed = receiver.feed(std::span(buffer.data(), *n)); !fed) {
            return fail(std::move(fed).error());
        }
    }
    auto image = receiver.finish();
    if (!image) {
        return fail(std::move(image).error());
    }
    if (image->digest != request.digest) {
        return failure(FailureKind::DigestMismatch, what, EINVAL,
                       "the image's digest is " + image->digest + ", not " + request.digest +
                           " (the ?digest= given): a damaged copy, or another image");
    }
    struct stat st {};
    const std::uint64_t allocated =
        ::fstat(out->fd(), &st) == 0 ? static_cast<std::uint64_t>(st.st_blocks) * 512 : 0;
    if (auto committed = out->commit(); !committed) {
        const FailureKind kind = committed.error().code() == EEXIST
                                     ? FailureKind::TemplateExists
                                     : kind_of(committed.error().code());
        return Failure{kind, std::move(committed).error().within(what)};
    }
    const std::string path = ctx.template_path(name);
    // Its digest is known now: sandboxes made over it and their exports never wait for a read.
    if (auto identity = ctx.platform.inspect_template(path); identity) {
        ctx.digests.adopt(path, *identity, image->list, *leaves);
    } else {
        spdlog::warn("template {}: uploaded but not usable: {}", path, identity.error().message());
    }
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    spdlog::info(
        "template {}: uploaded ({}, {} bytes received, {} image bytes, {} of data, {} "
        "allocated, {:.2f} s), digest {}",
        path, to_string(receiver.form()), received, image->size_bytes,
        human_bytes(image->data_bytes), human_bytes(allocated), took.count(), image->digest);
    TemplateInfo info;
    info.name = name;
    info.path = path;
    info.size_bytes = image->size_bytes;
    info.digest = image->digest;
    info.allocated_bytes = allocated;
    return info;
}

}  // namespace wrenn::agent
