#pragma once

// Reading a sandbox archive (docs/archive.md) from bytes that arrive in pieces of any size
// (an HTTP body, a pipe), checking every rule of the format as the bytes come.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "archive/format.hpp"
#include "common/digest.hpp"
#include "common/result.hpp"

struct ZSTD_DCtx_s;

namespace wrenn::archive {

// One archive being read: feed() its bytes in order, then finish() at the end of the input.
// Calls on_header once the header is whole and checked, then on_chunk for each record in
// order; an error from either stops the reader with that error. The archive is valid only
// when finish() succeeds (the trailer's digest matched): what the callbacks built before must
// stay provisional until then. Errors (EBADMSG) name the stream byte offset where the problem
// was found and what was expected there. Memory is bounded: one record, or one compressed
// frame and its records (at most 4 MiB each). After an error the reader is spent and returns
// that error again. Move-only.
class Reader {
  public:
    using OnHeader = std::function<Result<void>(const Header&)>;
    using OnChunk = std::function<Result<void>(std::uint64_t index, std::span<const std::byte>)>;

    Reader(OnHeader on_header, OnChunk on_chunk);
    ~Reader();
    Reader(Reader&&) noexcept;
    Reader& operator=(Reader&&) noexcept;
    Reader(const Reader&) = delete;
    Reader& operator=(const Reader&) = delete;

    Result<void> feed(std::span<const std::byte> bytes);
    // The input ended: an error unless the whole trailer was read and matched.
    Result<void> finish();

    [[nodiscard]] bool done() const { return part_ == Part::kDone; }
    [[nodiscard]] std::uint64_t offset() const { return offset_; }  // bytes consumed
    [[nodiscard]] const std::optional<Header>& header() const { return header_; }
    [[nodiscard]] std::uint64_t chunks_read() const { return chunks_; }

  private:
    enum class Part { kFixedHeader, kName, kRecord, kFrameHead, kFrame, kTrailer, kDone };
    struct FreeContext {
        void operator()(ZSTD_DCtx_s* ctx) const noexcept;
    };

    Result<void> complete_part();
    Result<void> record(const std::byte* p, std::uint64_t at, const char* where);
    void expect(Part part, std::size_t bytes);
    void after_records();
    Error fail(std::uint64_t at, std::string what);
    [[nodiscard]] const char* part_name() const;

    OnHeader on_header_;
    OnChunk on_chunk_;
    Sha256 digest_;
    std::unique_ptr<ZSTD_DCtx_s, FreeContext> dctx_;
    std::optional<Header> header_;
    std::optional<Error> error_;
    Part part_ = Part::kFixedHeader;
    std::vector<std::byte> buf_;  // the part being collected
    std::size_t need_ = kFixedHeaderBytes;
    std::uint64_t part_start_ = 0;  // stream offset of buf_[0]
    std::uint64_t offset_ = 0;
    std::vector<std::byte> raw_;  // a decompressed frame
    std::uint32_t frame_raw_bytes_ = 0;
    std::uint64_t chunks_ = 0;
    std::uint64_t next_min_index_ = 0;
    std::uint64_t trailer_start_ = 0;
};

}  // namespace wrenn::archive
