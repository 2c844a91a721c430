#include "archive/reader.hpp"

#include <zstd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>
#include <string>

#include "common/little_endian.hpp"
#include "common/text.hpp"

namespace wrenn::archive {

namespace {

std::string hex(const std::byte* p, std::size_t n) {
    return to_hex(reinterpret_cast<const std::uint8_t*>(p), n);
}

}  // namespace

void Reader::FreeContext::operator()(ZSTD_DCtx_s* ctx) const noexcept {
    ZSTD_freeDCtx(ctx);
}

Reader::Reader(OnHeader on_header, OnChunk on_chunk)
    : on_header_(std::move(on_header)), on_chunk_(std::move(on_chunk)) {
    buf_.reserve(kFixedHeaderBytes);
}

Reader::~Reader() = default;
Reader::Reader(Reader&&) noexcept = default;
Reader& Reader::operator=(Reader&&) noexcept = default;

Error Reader::fail(std::uint64_t at, std::string what) {
    error_ = Error("read archive at byte " + std::to_string(at), EBADMSG, std::move(what));
    return *error_;
}

const char* Reader::part_name() const {
    switch (part_) {
        case Part::kFixedHeader:
            return "header";
        case Part::kName:
            return "template name";
        case Part::kRecord:
            return "chunk record";
        case Part::kFrameHead:
            return "frame head";
        case Part::kFrame:
            return "zstd frame";
        case Part::kTrailer:
            return "trailer";
        case Part::kDone:
            break;
    }
    return "end";
}

void Reader::expect(Part part, std::size_t bytes) {
    part_ = part;
    need_ = bytes;
    part_start_ = offset_;
    buf_.clear();
}

Result<void> Reader::feed(std::span<const std::byte> bytes) {
    if (error_) {
        return *error_;
    }
    std::size_t pos = 0;
    while (pos < bytes.size()) {
        if (part_ == Part::kDone) {
            return fail(offset_, "data after the end of the archive (its trailer ends here)");
        }
        const std::size_t take = std::min(need_ - buf_.size(), bytes.size() - pos);
        const auto piece = bytes.subspan(pos, take);
        buf_.insert(buf_.end(), piece.begin(), piece.end());
        if (part_ != Part::kTrailer) {
            digest_.update(piece.data(), piece.size());
        }
        pos += take;
        offset_ += take;
        if (buf_.size() == need_) {
            if (auto ok = complete_part(); !ok) {
                if (!error_) {
                    error_ = ok.error();
                }
                return *error_;
            }
        }
    }
    return success();
}

Result<void> Reader::finish() {
    if (error_) {
        return *error_;
    }
    if (part_ == Part::kDone) {
        return success();
    }
    if (offset_ == 0) {
        return fail(0, "the stream is empty (expected an archive header)");
    }
    return fail(offset_, std::string("stream ended inside the ") + part_name() + " (expected " +
                             std::to_string(need_) + " bytes from byte " +
                             std::to_string(part_start_) + ", got " + std::to_string(buf_.size()) +
                             ")");
}

void Reader::after_records() {
    if (chunks_ == header_->chunk_count) {
        trailer_start_ = offset_;
        expect(Part::kTrailer, kTrailerBytes);
    } else if (header_->compressed) {
        expect(Part::kFrameHead, kFrameHeadBytes);
    } else {
        expect(Part::kRecord, header_->record_bytes());
    }
}

Result<void> Reader::record(const std::byte* p, std::uint64_t at, const char* where) {
    const std::uint64_t index = load_le<std::uint64_t>(p);
    if (index >= header_->origin_chunks()) {
        return fail(at, std::string(where) + "chunk " + std::to_string(index) +
                            " is past the origin's " + std::to_string(header_->origin_chunks()) +
                            " chunks");
    }
    if (index < next_min_index_) {
        return fail(at, std::string(where) + "chunk " + std::to_string(index) +
                            " is not after chunk " + std::to_string(next_min_index_ - 1) +
                            " (records must be in increasing origin order)");
    }
    next_min_index_ = index + 1;
    ++chunks_;
    return on_chunk_(index, std::span(p + kIndexBytes, header_->chunk_bytes));
}

Result<void> Reader::complete_part() {
    const std::byte* b = buf_.data();
    switch (part_) {
        case Part::kFixedHeader: {
            if (std::memcmp(b, kMagic.data(), kMagic.size()) != 0) {
                return fail(
                    0, "not a wrenn sandbox archive (magic " + hex(b, kMagic.size()) +
                           ", expected " +
                           hex(reinterpret_cast<const std::byte*>(kMagic.data()), kMagic.size()) +
                           ")");
            }
            Header h;
            h.version = load_le<std::uint32_t>(b + 8);
            if (h.version != kVersion && h.version != kWholeSha256Version) {
                return fail(8, "format version " + std::to_string(h.version) +
                                   ", this reader knows versions 1 and 2 (a newer agent wrote "
                                   "it: upgrade this one)");
            }
            const auto flags = load_le<std::uint32_t>(b + 12);
            if ((flags & ~(kFlagCompressed | kFlagImage)) != 0) {
                return fail(12, "flags " + std::to_string(flags) +
                                    " has unknown bits set (only bit 0, compressed, and bit 1, "
                                    "image, are defined)");
            }
            h.compressed = (flags & kFlagCompressed) != 0;
            h.image = (flags & kFlagImage) != 0;
            if (h.image && h.version != kVersion) {
                return fail(12, "a template image stream (flag bit 1) in a version " +
                                    std::to_string(h.version) + " header; only version 2 has one");
            }
            h.chunk_bytes = load_le<std::uint32_t>(b + 16);
            if (h.chunk_bytes < kMinChunkBytes || h.chunk_bytes > kMaxChunkBytes ||
                (h.chunk_bytes & (h.chunk_bytes - 1)) != 0) {
                return fail(16, "chunk size " + std::to_string(h.chunk_bytes) +
                                    ", expected a power of two from 512 to 1048576");
            }
            const auto name_bytes = load_le<std::uint32_t>(b + 20);
            if (name_bytes == 0 || name_bytes > kMaxNameBytes) {
                return fail(
                    20, "template name size " + std::to_string(name_bytes) + ", expected 1 to 255");
            }
            h.origin_bytes = load_le<std::uint64_t>(b + 24);
            if (h.origin_bytes == 0 || h.origin_bytes % 512 != 0) {
                return fail(24, "origin size " + std::to_string(h.origin_bytes) +
                                    ", expected a non-zero multiple of 512");
            }
            h.chunk_count = load_le<std::uint64_t>(b + 32);
            if (h.chunk_count > h.origin_chunks()) {
                return fail(32, "chunk count " + std::to_string(h.chunk_count) +
                                    ", more than the origin's " +
                                    std::to_string(h.origin_chunks()) + " chunks");
            }
            std::memcpy(h.template_digest.data(), b + 40, kDigestBytes);
            header_ = std::move(h);
            expect(Part::kName, name_bytes);
            return success();
        }
        case Part::kName: {
            header_->template_name.assign(reinterpret_cast<const char*>(b), buf_.size());
            const auto bad = header_->template_name.find_first_of(std::string("/\0", 2));
            if (bad != std::string::npos) {
                return fail(part_start_ + bad, "template name holds a '/' or NUL");
            }
            // It goes into logs and into a 409's JSON: text, and nothing that could forge a line.
            if (!is_clean_utf8(header_->template_name)) {
                return fail(part_start_,
                            "template name is not UTF-8 text without control characters");
            }
            if (header_->compressed) {
                dctx_.reset(ZSTD_createDCtx());
                if (!dctx_) {
                    throw std::bad_alloc();
                }
            } else {
                buf_.reserve(header_->record_bytes());
            }
            if (auto ok = on_header_(*header_); !ok) {
                return ok;
            }
            after_records();
            return success();
        }
        case Part::kRecord:
            if (auto ok = record(b, part_start_, ""); !ok) {
                return ok;
            }
            after_records();
            return success();
        case Part::kFrameHead: {
            const auto raw = load_le<std::uint32_t>(b);
            const auto zbytes = load_le<std::uint32_t>(b + 4);
            const auto rb = header_->record_bytes();
            const auto left = header_->chunk_count - chunks_;
            if (raw == 0 || raw % rb != 0 || raw > kMaxFrameRawBytes) {
                return fail(part_start_, "frame of " + std::to_string(raw) +
                                             " raw bytes, expected a non-zero multiple of " +
                                             std::to_string(rb) + " up to " +
                                             std::to_string(kMaxFrameRawBytes));
            }
            if (raw / rb > left) {
                return fail(part_start_, "frame of " + std::to_string(raw / rb) +
                                             " records, but only " + std::to_string(left) +
                                             " of the header's chunk count remain");
            }
            if (zbytes == 0 || zbytes > ZSTD_compressBound(raw)) {
                return fail(part_start_ + 4, "zstd frame of " + std::to_string(zbytes) +
                                                 " bytes, expected 1 to " +
                                                 std::to_string(ZSTD_compressBound(raw)) + " for " +
                                                 std::to_string(raw) + " raw bytes");
            }
            frame_raw_bytes_ = static_cast<std::uint32_t>(raw);
            expect(Part::kFrame, zbytes);
            return success();
        }
        case Part::kFrame: {
            const std::uint64_t frame_at = part_start_ - kFrameHeadBytes;
            if (ZSTD_findFrameCompressedSize(b, buf_.size()) != buf_.size()) {
                return fail(part_start_, "not one complete zstd frame of " +
                                             std::to_string(buf_.size()) + " bytes");
            }
            raw_.resize(frame_raw_bytes_);
            const std::size_t n =
                ZSTD_decompressDCtx(dctx_.get(), raw_.data(), raw_.size(), b, buf_.size());
            if (ZSTD_isError(n) != 0U) {
                return fail(part_start_,
                            std::string("zstd frame does not decompress: ") + ZSTD_getErrorName(n));
            }
            if (n != frame_raw_bytes_) {
                return fail(part_start_, "zstd frame decompresses to " + std::to_string(n) +
                                             " bytes, its head says " +
                                             std::to_string(frame_raw_bytes_));
            }
            const auto rb = header_->record_bytes();
            for (std::size_t i = 0; i < n; i += rb) {
                const std::string where = "record " + std::to_string(i / rb) +
                                          " of the frame at byte " + std::to_string(frame_at) +
                                          ": ";
                if (auto ok = record(raw_.data() + i, part_start_, where.c_str()); !ok) {
                    return ok;
                }
            }
            after_records();
            return success();
        }
        case Part::kTrailer: {
            if (std::memcmp(b, kEndMagic.data(), kEndMagic.size()) != 0) {
                return fail(trailer_start_, "expected the trailer after " +
                                                std::to_string(chunks_) + " chunks, found " +
                                                hex(b, kEndMagic.size()) +
                                                " instead of \"WRENNEND\"");
            }
            const auto sum = digest_.digest();
            if (std::memcmp(b + kEndMagic.size(), sum.data(), sum.size()) != 0) {
                return fail(trailer_start_ + kEndMagic.size(),
                            "SHA-256 " + hex(b + kEndMagic.size(), kDigestBytes) +
                                " in the trailer, but bytes 0 to " +
                                std::to_string(trailer_start_) + " hash to " +
                                to_hex(sum.data(), sum.size()) +
                                " (the archive was changed or damaged)");
            }
            part_ = Part::kDone;
            buf_.clear();
            buf_.shrink_to_fit();
            raw_.clear();
            raw_.shrink_to_fit();
            return success();
        }
        case Part::kDone:
            break;
    }
    return success();
}

}  // namespace wrenn::archive
