// Export and import of a sandbox over the API (docs/api.md): the sandbox archive's transfer.cpp
// applied to the manager's sandboxes, with the strand and crash rules of fork and create.
//
// What an export holds: the sandbox's strand, for the whole export. A paused sandbox is read
// straight from its CoW, which a resume (the kernel writes it again), a destroy (unlinks it)
// or a flatten (reads it under another rule) must not touch meanwhile; holding the strand makes
// them wait until the archive is sent. A running sandbox is suspended only while its CoW is
// copied (fork's copy_source_cow: FICLONE where the filesystem can) into a temporary file in
// its own folder, which the export then reads; the strand is still held so that a destroy
// cannot remove that folder under the reader, and the copy is removed when the export ends,
// whatever the outcome. A client that stops reading is cut after read_timeout by the server,
// which makes the export's next write fail, so the strand is never held for a stalled client
// longer than that.
#include <dirent.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <vector>

#include "agent/sandboxes/operations.hpp"
#include "agent/transfer/rate_floor.hpp"
#include "dm/snapshot_format.hpp"

namespace wrenn::agent {

Result<OperationRunner::Prepared<PreparedExport>, Failure> prepare_export(OperationContext& ctx,
                                                                          const EntryPtr& entry,
                                                                          bool compress) {
    const Sandbox sb = ctx.table.record(entry);
    const std::string what = "export " + sb.id;
    if (auto missing = check_kernel(ctx.platform, what)) {
        // Even a paused sandbox's: whether its device is live is the kernel's to say.
        return *missing;
    }
    if (sb.origin.type != OriginSpec::Type::Loop) {
        return failure(FailureKind::InvalidState, what, 0,
                       "only a sandbox made over a template can be exported (an archive names "
                       "its template by content digest); this one has a TCMU origin");
    }
    auto same_template = verify_template(ctx, sb, what);
    if (!same_template) {
        return same_template.error();
    }
    // The archive names the template by its blocks digest: known, or read now (an export is
    // about the bytes; a background read of it in progress is joined, not repeated).
    const TemplateIdentity version = same_template.value().value_or(TemplateIdentity{});
    std::string digest = version.digest;
    if (!is_blocks_digest(digest)) {
        auto read = ctx.digests.wait(sb.origin.path, version);
        if (!read) {
            const FailureKind kind = read.error().code() == ESTALE ? FailureKind::TemplateChanged
                                                                   : FailureKind::Internal;
            return Failure{kind, std::move(read).error().within(what)};
        }
        digest = *read;
    }
    ExportSource source{sb.cow_path, sb.origin_size_bytes, digest, sb.template_name + ".img"};
    auto prepared = std::make_shared<PreparedExport>();
    prepared->id = sb.id;
    prepared->compress = compress;
    if (sb.state == SandboxState::Paused) {
        if (auto live = check_no_live_device(ctx.platform, sb.id, what, "export")) {
            return *live;
        }
    }
    if (auto unusable = check_cow_usable(ctx.platform, sb, what)) {
        return *unusable;
    }
    if (sb.state == SandboxState::Running) {
        // The copy takes at most the CoW's allocated space (none with reflinks), held until the
        // export ends so that concurrent transfers cannot together overshoot --min-free.
        auto reserved = reserve_space(ctx.space, allocated_bytes_of(sb.cow_path), what);
        if (!reserved) {
            return reserved.error();
        }
        prepared->reservation = std::move(reserved).value();
        auto copied = copy_source_cow(ctx, entry, sb, ctx.store.export_copy_path(sb.id), what,
                                      SuspendReason::Export);
        if (!copied) {
            return copied.error();
        }
        prepared->copy = std::move(copied.value());
        source.cow_path = prepared->copy->path();
    }
    // The store is read and checked before the client is promised anything: a CoW that cannot
    // be exported is an error status, not a 200 and a cut stream.
    auto exporter = ArchiveExport::open(source, compress);
    if (!exporter) {
        const FailureKind kind = exporter.error().code() == 0 || exporter.error().code() == EUCLEAN
                                     ? FailureKind::SnapshotInvalid
                                     : FailureKind::Internal;
        return Failure{kind, std::move(exporter).error().within(what)};
    }
    prepared->exporter.emplace(std::move(exporter).value());
    // A paused sandbox is read from its own CoW: held until the archive is sent. A running one
    // is read from the copy, which the exporter has open: its sandbox is free from here on (a
    // destroy removes the copy's name, not the open file).
    return OperationRunner::Prepared<PreparedExport>{std::move(prepared),
                                                     sb.state != SandboxState::Running};
}

Result<TransferStats, Failure> stream_export(OperationContext& ctx, PreparedExport& prepared,
                                             const ExportBegin& begin) {
    const std::string what = "export " + prepared.id;
    // From here on the client has a 200 and a byte stream: an error aborts that stream.
    const archive::ByteSink sink = begin();
    RateFloor floor(ctx.options.min_transfer_rate, ctx.options.transfer_rate_window);
    bool too_slow = false;
    auto stats = prepared.exporter->write([&](std::span<const std::byte> bytes) -> Result<void> {
        const auto start = RateFloor::Clock::now();
        auto written = sink(bytes);
        if (written && !floor.moved(bytes.size(), RateFloor::Clock::now() - start)) {
            too_slow = true;
            return Error("send", ETIMEDOUT, "the client read slower than --min-transfer-rate");
        }
        return written;
    });
    prepared.copy.reset();  // the point-in-time copy goes, whatever happened
    if (!stats) {
        const FailureKind kind = too_slow ? FailureKind::TransferTooSlow : FailureKind::Internal;
        return Failure{kind, std::move(stats).error().within(what)};
    }
    spdlog::info("sandbox={} op=export {} changed chunks, {} bytes{}", prepared.id, stats->chunks,
                 stats->archive_bytes, prepared.compress ? " (zstd)" : "");
    return *stats;
}

namespace {

// The template in templates_dir whose content has the archive's digest, or 409
// template_mismatch naming the digest.
Result<TemplateMatch, Failure> archive_template(OperationContext& ctx,
                                                const archive::Header& header,
                                                const std::string& what) {
    const std::string needed = header.template_digest_name();
    // The archive's own name first: the usual case.
    const std::string own = header.template_name.ends_with(".img")
                                ? header.template_name.substr(0, header.template_name.size() - 4)
                                : header.template_name;
    auto found =
        find_template_by_digest(ctx, DigestSearch{needed, header.origin_bytes, own, true}, what);
    if (!found && found.error().kind == FailureKind::TemplateNotFound) {
        return failure(FailureKind::TemplateMismatch, what, 0,
                       "the archive needs template \"" + header.template_name + "\" with digest " +
                           needed + "; no template in " + ctx.options.templates_dir +
                           " has that content: upload the exporting host's image (GET "
                           "/templates/{name}/image there, PUT /templates/{name}?digest=" +
                           needed + " here) and retry");
    }
    return found;
}

}  // namespace

Result<Sandbox, Failure> import_sandbox(OperationContext& ctx, const EntryPtr& entry,
                                        const ImportOptions& options, const ReadBody& read_body) {
    const std::string id = entry->record.id;
    const std::string what = "import " + id;
    if (auto full = check_space(ctx.space, what)) {
        return *full;
    }
    if (auto made = make_sandbox_dir(ctx, id, what); !made) {
        return made.error();
    }
    // Until the record is written (last), the folder is an unfinished sandbox: a crash leaves
    // it for the next start to remove, and every refusal below removes it now.
    auto remove_files = [&] {
        if (auto removed = ctx.store.remove_sandbox(id); !removed) {
            spdlog::error("sandbox={} op=import cleanup failed: {}", id, removed.error().message());
        }
    };
    std::optional<TemplateMatch> match;
    std::optional<TemplateGuards::Hold> hold;  // on the template's name, until the record is in
    std::optional<Failure> refused;  // a refusal of ours from inside the archive's callbacks
    SpaceReservation reservation;    // the new CoW's room, held until the import ends
    std::uint64_t limit = options.max_bytes;
    ArchiveImport import([&](const archive::Header& h) -> Result<ImportTarget> {
        auto found = archive_template(ctx, h, what);
        if (!found) {
            refused = found.error();
            return found.error().error;
        }
        match = found.value();
        // Until the record is written, a delete or an upload of the template waits its turn.
        auto held = share_template(ctx, match->name, what);
        if (!held) {
            refused = held.error();
            return held.error().error;
        }
        hold.emplace(std::move(held).value());
        // The CoW the archive's chunks make, held against --min-free while it is written.
        auto reserved =
            reserve_space(ctx.space, dm::persistent_store_allocated_bytes(h.chunk_count), what);
        if (!reserved) {
            refused = reserved.error();
            return reserved.error().error;
        }
        reservation = std::move(reserved).value();
        // The largest honest archive of this template: every chunk changed, stored raw,
        // plus 1% for framing (8 bytes of index per chunk, frame heads, header, trailer).
        const std::uint64_t origin_bound = h.origin_bytes + h.origin_bytes / 100 + (1 << 20);
        limit = std::min(limit, origin_bound);
        const std::uint64_t origin_bytes = match->identity.served_bytes();
        return ImportTarget{origin_bytes, ctx.store.cow_path(id),
                            dm::cow_size_for_origin(origin_bytes)};
    });
    std::vector<std::byte> buffer(1 << 20);
    std::uint64_t received = 0;
    RateFloor floor(ctx.options.min_transfer_rate, ctx.options.transfer_rate_window);
    auto fail = [&](Failure f) {
        remove_files();
        return f;
    };
    for (;;) {
        const auto waiting = RateFloor::Clock::now();
        auto n = read_body(buffer);
        const auto waited = RateFloor::Clock::now() - waiting;
        if (!n) {
            // The client went away, sent more than the server's limit, or stalled.
            const int code = n.error().code();
            const FailureKind kind =
                code == EFBIG ? FailureKind::PayloadTooLarge : FailureKind::InvalidArchive;
            return fail(Failure{kind, Error(what, code,
                                            "the upload broke after " + std::to_string(received) +
                                                " bytes: " + n.error().message())});
        }
        if (*n == 0) {
            break;
        }
        received += *n;
        if (!floor.moved(*n, waited)) {
            return fail(failure(FailureKind::TransferTooSlow, what, ETIMEDOUT,
                                "the upload was slower than --min-transfer-rate (" +
                                    std::to_string(floor.bytes_per_second()) + " bytes/s over " +
                                    std::to_string(floor.window().count() / 1000) + " s) after " +
                                    std::to_string(received) +
                                    " bytes; send it over a faster link"));
        }
        if (received > limit) {
            return fail(failure(FailureKind::PayloadTooLarge, what, EFBIG,
                                "the archive is larger than " + std::to_string(limit) +
                                    " bytes (its template's size plus 1%, or "
                                    "--max-import-bytes): it is not an archive this agent "
                                    "writes"));
        }
        if (auto fed = import.feed(std::span(buffer.data(), *n)); !fed) {
            if (refused) {
                return fail(*refused);
            }
            const FailureKind kind =
                fed.error().code() == EBADMSG ? FailureKind::InvalidArchive : FailureKind::Internal;
            return fail(Failure{kind, std::move(fed).error().within(what)});
        }
    }
    auto stats = import.finish();
    if (!stats) {
        if (refused) {
            return fail(*refused);
        }
        const FailureKind kind =
            stats.error().code() == EBADMSG ? FailureKind::InvalidArchive : FailureKind::Internal;
        return fail(Failure{kind, std::move(stats).error().within(what)});
    }
    if (!match) {
        return fail(internal(Error(what, EINVAL, "the archive had no header")));
    }
    Sandbox sb;
    sb.id = id;
    sb.state = SandboxState::Paused;
    sb.template_name = match->name;
    sb.origin = OriginSpec{
        OriginSpec::Type::Loop, ctx.template_path(match->name), {}, std::nullopt, match->identity};
    sb.cow_path = ctx.store.cow_path(id);
    sb.origin_size_bytes = match->identity.served_bytes();
    sb.cow_size_bytes = dm::cow_size_for_origin(sb.origin_size_bytes);
    // What the kernel will report once it runs: the store was written as the kernel lays it out.
    sb.cow_allocated_bytes = dm::persistent_store_allocated_bytes(stats->chunks);
    sb.created_at = sb.updated_at = utc_now();
    if (auto written = ctx.table.commit(entry, sb); !written) {
        return fail(internal(std::move(written).error().within(what)));
    }
    spdlog::info(
        "sandbox={} op=import {} changed chunks over template '{}' ({}), {} bytes", id,
        stats->chunks, match->name,
        match->identity.digest.empty() ? std::string("digest pending") : match->identity.digest,
        received);
    return sb;
}

}  // namespace wrenn::agent
