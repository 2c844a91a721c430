#include "agent/transfer/transfer.hpp"

#include <cerrno>
#include <optional>
#include <vector>

#include "archive/reader.hpp"
#include "archive/writer.hpp"
#include "dm/snapshot_format.hpp"
#include "flatten/exception_store.hpp"
#include "flatten/exception_store_writer.hpp"
#include "flatten/image_copy.hpp"

namespace wrenn::agent {

struct ArchiveExport::State {
    std::string action;
    std::string cow_path;
    flatten::OpenedImage cow;
    flatten::ExceptionStore store;
    archive::Header header;
};

ArchiveExport::ArchiveExport(std::unique_ptr<State> state) : state_(std::move(state)) {}
ArchiveExport::~ArchiveExport() = default;
ArchiveExport::ArchiveExport(ArchiveExport&&) noexcept = default;
ArchiveExport& ArchiveExport::operator=(ArchiveExport&&) noexcept = default;

Result<ArchiveExport> ArchiveExport::open(const ExportSource& source, bool compress) {
    const std::string action = "export " + source.cow_path;
    archive::Header header;
    if (auto named = archive::set_template_digest(header, source.template_digest); !named) {
        return std::move(named).error().within(action);
    }
    auto cow = flatten::open_read_only(source.cow_path);
    if (!cow) {
        return std::move(cow).error().within(action);
    }
    auto store =
        flatten::read_exception_store(flatten::pread_reader(cow->fd.get(), source.cow_path),
                                      cow->size, source.origin_bytes, source.cow_path);
    if (!store) {
        return std::move(store).error().within(action);
    }
    header.compressed = compress;
    // A store the snapshot never used has no chunk size of its own: the agent's.
    header.chunk_bytes =
        static_cast<std::uint32_t>(store->empty ? dm::kChunkBytes : store->chunk_bytes());
    header.origin_bytes = source.origin_bytes;
    header.chunk_count = store->exceptions.size();
    header.template_name = source.template_name;
    return ArchiveExport(
        std::make_unique<State>(State{action, source.cow_path, std::move(cow).value(),
                                      std::move(store).value(), std::move(header)}));
}

Result<TransferStats> ArchiveExport::write(const archive::ByteSink& sink) {
    const State& st = *state_;
    const std::string& action = st.action;
    auto writer = archive::Writer::create(st.header, sink);
    if (!writer) {
        return std::move(writer).error().within(action);
    }
    const flatten::ReadAt read = flatten::pread_reader(st.cow.fd.get(), st.cow_path);
    std::vector<std::byte> chunk(st.header.chunk_bytes);
    for (const auto& e : st.store.exceptions) {
        std::size_t got = 0;
        while (got < chunk.size()) {
            auto n = read(e.new_chunk * chunk.size() + got, std::span(chunk).subspan(got));
            if (!n) {
                return std::move(n).error().within(action);
            }
            if (*n == 0) {
                return Error(action, EUCLEAN,
                             "the file ends inside CoW chunk " + std::to_string(e.new_chunk));
            }
            got += *n;
        }
        if (auto ok = writer->add_chunk(e.old_chunk, chunk); !ok) {
            return std::move(ok).error().within(action);
        }
    }
    if (auto ok = writer->finish(); !ok) {
        return std::move(ok).error().within(action);
    }
    return TransferStats{writer->chunks_written(), writer->bytes_written()};
}

Result<TransferStats> export_archive(const ExportSource& source, bool compress,
                                     const archive::ByteSink& sink) {
    auto exporter = ArchiveExport::open(source, compress);
    if (!exporter) {
        return std::move(exporter).error();
    }
    return exporter->write(sink);
}

struct ArchiveImport::State {
    explicit State(Choose c)
        : choose(std::move(c)),
          reader([this](const archive::Header& h) { return on_header(h); },
                 [this](std::uint64_t index, std::span<const std::byte> data) {
                     return store->add_chunk(index, data);
                 }) {}

    Result<void> on_header(const archive::Header& h) {
        if (h.image) {
            return Error("archive header", EBADMSG,
                         "this is a template image stream (docs/archive.md), not a sandbox "
                         "archive: upload it with PUT /templates/{name}");
        }
        auto chosen = choose(h);
        if (!chosen) {
            return std::move(chosen).error();
        }
        if (h.origin_bytes != chosen->origin_bytes) {
            return Error("archive header", EINVAL,
                         "the archive is of a template of " + std::to_string(h.origin_bytes) +
                             " bytes, this one has " + std::to_string(chosen->origin_bytes));
        }
        if (h.chunk_bytes != dm::kChunkBytes) {
            return Error("archive header", EINVAL,
                         "the archive has chunks of " + std::to_string(h.chunk_bytes) +
                             " bytes; sandboxes here use " + std::to_string(dm::kChunkBytes));
        }
        target = std::move(chosen).value();
        auto created = flatten::PendingOutput::create(target->cow_path, 0600);
        if (!created) {
            return std::move(created).error();
        }
        pending.emplace(std::move(created).value());
        if (auto ok =
                flatten::set_file_size(pending->fd(), target->cow_bytes, pending->temp_path());
            !ok) {
            return ok;
        }
        auto writer = flatten::ExceptionStoreWriter::create(
            flatten::pwrite_writer(pending->fd(), pending->temp_path()), h.chunk_bytes,
            h.origin_bytes, target->cow_bytes);
        if (!writer) {
            return std::move(writer).error();
        }
        store.emplace(std::move(writer).value());
        return success();
    }

    // Forgets what was built: the temporary CoW is removed.
    void discard() {
        store.reset();
        pending.reset();
    }

    Choose choose;
    archive::Reader reader;
    std::optional<ImportTarget> target;
    std::optional<flatten::PendingOutput> pending;
    std::optional<flatten::ExceptionStoreWriter> store;
    bool finished = false;
};

ArchiveImport::ArchiveImport(Choose choose) : state_(std::make_unique<State>(std::move(choose))) {}
ArchiveImport::~ArchiveImport() = default;
ArchiveImport::ArchiveImport(ArchiveImport&&) noexcept = default;
ArchiveImport& ArchiveImport::operator=(ArchiveImport&&) noexcept = default;

Result<void> ArchiveImport::feed(std::span<const std::byte> bytes) {
    auto ok = state_->reader.feed(bytes);
    if (!ok) {
        state_->discard();
    }
    return ok;
}

Result<TransferStats> ArchiveImport::finish() {
    State& s = *state_;
    if (s.finished) {
        return Error("import", EINVAL, "already finished");
    }
    s.finished = true;
    if (auto ok = s.reader.finish(); !ok) {
        s.discard();
        return std::move(ok).error();
    }
    if (auto ok = s.store->finish(); !ok) {
        s.discard();
        return std::move(ok).error();
    }
    if (auto ok = s.pending->commit(); !ok) {
        s.discard();
        return std::move(ok).error();
    }
    return TransferStats{s.reader.chunks_read(), s.reader.offset()};
}

}  // namespace wrenn::agent
