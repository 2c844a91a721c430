#pragma once

// Writing a sandbox archive (docs/archive.md) to a byte sink, one chunk at a time.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "archive/format.hpp"
#include "common/digest.hpp"
#include "common/result.hpp"

struct ZSTD_CCtx_s;

namespace wrenn::archive {

// One archive being written: the header at creation, then add_chunk() for each of the
// header's chunk_count chunks in increasing index order, then finish() for the trailer.
// Memory is bounded whatever the archive's size: one frame of records (256 KiB) and its
// compressed form. After any error the writer is spent: every later call returns an error
// and the sink has received a stream no reader accepts. Move-only.
class Writer {
  public:
    // The largest raw_bytes of a frame this writer makes (at least one record).
    static constexpr std::size_t kTargetFrameRawBytes = 256 << 10;
    static constexpr int kZstdLevel = 3;

    // Checks the header (check_header) and writes it.
    static Result<Writer> create(Header header, ByteSink sink);

    ~Writer();
    Writer(Writer&&) noexcept;
    Writer& operator=(Writer&&) noexcept;
    Writer(const Writer&) = delete;
    Writer& operator=(const Writer&) = delete;

    // data: exactly chunk_bytes; index: above the previous one and below origin_chunks.
    Result<void> add_chunk(std::uint64_t index, std::span<const std::byte> data);
    // Writes the last frame and the trailer; an error unless chunk_count chunks were added.
    Result<void> finish();

    [[nodiscard]] const Header& header() const { return header_; }
    [[nodiscard]] std::uint64_t bytes_written() const { return bytes_written_; }
    [[nodiscard]] std::uint64_t chunks_written() const { return chunks_; }

  private:
    struct FreeContext {
        void operator()(ZSTD_CCtx_s* ctx) const noexcept;
    };
    Writer(Header header, ByteSink sink);
    Result<void> emit(std::span<const std::byte> bytes);
    Result<void> flush_frame();
    Error spend(Error error);

    Header header_;
    ByteSink sink_;
    Sha256 digest_;
    std::unique_ptr<ZSTD_CCtx_s, FreeContext> cctx_;
    std::vector<std::byte> raw_;         // records of the frame being filled
    std::vector<std::byte> compressed_;  // frame head + zstd frame
    std::uint64_t bytes_written_ = 0;
    std::uint64_t chunks_ = 0;
    std::uint64_t next_min_index_ = 0;  // the lowest index add_chunk accepts
    bool spent_ = false;
};

}  // namespace wrenn::archive
