#pragma once

// Moving a paused sandbox between hosts as a sandbox archive (docs/archive.md): export reads
// its CoW's exception store (flatten) and streams the changed chunks through archive::Writer;
// import feeds archive::Reader and writes a new CoW with flatten's ExceptionStoreWriter. Both
// work on plain files, so that the CLI, the API and the tests share them.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "archive/format.hpp"
#include "common/result.hpp"

namespace wrenn::agent {

// A download (an export, a template image): called once every check passed, before the first
// byte; returns where the bytes go.
using ExportBegin = std::function<archive::ByteSink()>;
// An upload (an import, a template image): blocking reads of the body (0 at its end, an error
// when it was cut short).
using ReadBody = std::function<Result<std::size_t>(std::span<std::byte>)>;

// The paused sandbox to export and the template it was made over.
struct ExportSource {
    std::string cow_path;
    std::uint64_t origin_bytes = 0;
    std::string template_digest;  // named by its algorithm: "blocks-sha256-4k:<hex>"
    std::string template_name;    // the image's file name
};

struct TransferStats {
    std::uint64_t chunks = 0;
    std::uint64_t archive_bytes = 0;
};

// An export whose CoW store has been read and checked, before a byte is written: an
// invalidated store (errno 0) or a corrupt one (EUCLEAN) is refused by open(), so that a caller
// can still answer with an error instead of a cut stream. write() then streams each changed
// chunk in origin order. Memory: the exception list (16 bytes per changed chunk), one chunk and
// one writer frame.
class ArchiveExport {
  public:
    static Result<ArchiveExport> open(const ExportSource& source, bool compress);
    ~ArchiveExport();
    ArchiveExport(ArchiveExport&&) noexcept;
    ArchiveExport& operator=(ArchiveExport&&) noexcept;

    Result<TransferStats> write(const archive::ByteSink& sink);

  private:
    struct State;
    explicit ArchiveExport(std::unique_ptr<State> state);
    std::unique_ptr<State> state_;
};

// open() and write() in one step (the CLI, where nothing was promised before the first byte).
Result<TransferStats> export_archive(const ExportSource& source, bool compress,
                                     const archive::ByteSink& sink);

// Where an archive's chunks go: a new CoW file for a template of origin_bytes.
struct ImportTarget {
    std::uint64_t origin_bytes = 0;
    std::string cow_path;  // must not exist
    std::uint64_t cow_bytes = 0;
};

// One archive being turned into a new CoW file, as its bytes arrive. The CoW is written under
// a temporary name beside cow_path and renamed to it only by a successful finish(), once the
// trailer's digest matched; any error, or destroying an unfinished import, removes it, so that
// a refused stream leaves no file behind. The header goes to `choose` first, which finds (or
// refuses) the template it needs and says where the CoW goes. Errors from the stream say where
// it broke (archive::Reader, EBADMSG); the caller's own refusals keep their errno.
class ArchiveImport {
  public:
    using Choose = std::function<Result<ImportTarget>(const archive::Header&)>;

    explicit ArchiveImport(Choose choose);
    ~ArchiveImport();
    ArchiveImport(ArchiveImport&&) noexcept;
    ArchiveImport& operator=(ArchiveImport&&) noexcept;

    Result<void> feed(std::span<const std::byte> bytes);
    // The input ended: checks the trailer, finishes the store, renames the CoW into place.
    Result<TransferStats> finish();

  private:
    struct State;
    std::unique_ptr<State> state_;
};

// The CLI: `wrenn-agent export ...`, `import ...` and `digest FILE` (args start with the
// subcommand's name). "-" means stdin_fd / stdout_fd. Returns the exit status.
int run_transfer_cli(std::vector<std::string> args, std::ostream& out, std::ostream& err,
                     int stdin_fd = 0, int stdout_fd = 1);

}  // namespace wrenn::agent
