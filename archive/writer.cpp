#include "archive/writer.hpp"

#include <zstd.h>

#include <algorithm>
#include <cerrno>
#include <new>

#include "common/little_endian.hpp"

namespace wrenn::archive {

void Writer::FreeContext::operator()(ZSTD_CCtx_s* ctx) const noexcept {
    ZSTD_freeCCtx(ctx);
}

Writer::Writer(Header header, ByteSink sink) : header_(std::move(header)), sink_(std::move(sink)) {}

Writer::~Writer() = default;
Writer::Writer(Writer&&) noexcept = default;
Writer& Writer::operator=(Writer&&) noexcept = default;

Result<Writer> Writer::create(Header header, ByteSink sink) {
    if (auto ok = check_header(header); !ok) {
        return std::move(ok).error().within("write archive");
    }
    Writer w(std::move(header), std::move(sink));
    const Header& h = w.header_;
    if (h.compressed) {
        w.cctx_.reset(ZSTD_createCCtx());
        if (!w.cctx_) {
            throw std::bad_alloc();
        }
        ZSTD_CCtx_setParameter(w.cctx_.get(), ZSTD_c_compressionLevel, kZstdLevel);
        // Every frame says its own content size, which the reader also checks.
        ZSTD_CCtx_setParameter(w.cctx_.get(), ZSTD_c_contentSizeFlag, 1);
        const std::size_t per_frame =
            std::max<std::size_t>(1, kTargetFrameRawBytes / h.record_bytes()) * h.record_bytes();
        w.raw_.reserve(per_frame);
        w.compressed_.resize(kFrameHeadBytes + ZSTD_compressBound(per_frame));
    }
    std::vector<std::byte> bytes(h.header_bytes());
    std::copy(kMagic.begin(), kMagic.end(), reinterpret_cast<std::uint8_t*>(bytes.data()));
    store_le<std::uint32_t>(&bytes[8], h.version);
    store_le<std::uint32_t>(&bytes[12],
                            (h.compressed ? kFlagCompressed : 0) | (h.image ? kFlagImage : 0));
    store_le<std::uint32_t>(&bytes[16], h.chunk_bytes);
    store_le<std::uint32_t>(&bytes[20], static_cast<std::uint32_t>(h.template_name.size()));
    store_le<std::uint64_t>(&bytes[24], h.origin_bytes);
    store_le<std::uint64_t>(&bytes[32], h.chunk_count);
    std::copy(h.template_digest.begin(), h.template_digest.end(),
              reinterpret_cast<std::uint8_t*>(&bytes[40]));
    std::copy(h.template_name.begin(), h.template_name.end(),
              reinterpret_cast<char*>(&bytes[kFixedHeaderBytes]));
    if (auto ok = w.emit(bytes); !ok) {
        return std::move(ok).error();
    }
    return w;
}

Error Writer::spend(Error error) {
    spent_ = true;
    return std::move(error).within("write archive");
}

Result<void> Writer::emit(std::span<const std::byte> bytes) {
    digest_.update(bytes.data(), bytes.size());
    if (auto ok = sink_(bytes); !ok) {
        return spend(std::move(ok).error());
    }
    bytes_written_ += bytes.size();
    return success();
}

Result<void> Writer::add_chunk(std::uint64_t index, std::span<const std::byte> data) {
    if (spent_) {
        return Error("write archive", EINVAL, "an earlier error ended this archive");
    }
    if (data.size() != header_.chunk_bytes) {
        return spend(Error("add chunk " + std::to_string(index), EINVAL,
                           std::to_string(data.size()) + " bytes, expected " +
                               std::to_string(header_.chunk_bytes)));
    }
    if (chunks_ == header_.chunk_count) {
        return spend(Error("add chunk " + std::to_string(index), EINVAL,
                           "the header promised " + std::to_string(header_.chunk_count) +
                               " chunks and all were written"));
    }
    if (index < next_min_index_ || index >= header_.origin_chunks()) {
        return spend(
            Error("add chunk " + std::to_string(index), EINVAL,
                  index >= header_.origin_chunks()
                      ? "past the origin's " + std::to_string(header_.origin_chunks()) + " chunks"
                      : "not after the previous chunk " + std::to_string(next_min_index_ - 1)));
    }
    next_min_index_ = index + 1;
    ++chunks_;
    std::byte index_bytes[kIndexBytes];
    store_le<std::uint64_t>(index_bytes, index);
    if (!header_.compressed) {
        if (auto ok = emit(index_bytes); !ok) {
            return ok;
        }
        return emit(data);
    }
    if (!raw_.empty() && raw_.size() + header_.record_bytes() > raw_.capacity()) {
        if (auto ok = flush_frame(); !ok) {
            return ok;
        }
    }
    raw_.insert(raw_.end(), std::begin(index_bytes), std::end(index_bytes));
    raw_.insert(raw_.end(), data.begin(), data.end());
    return success();
}

Result<void> Writer::flush_frame() {
    const std::size_t n =
        ZSTD_compress2(cctx_.get(), compressed_.data() + kFrameHeadBytes,
                       compressed_.size() - kFrameHeadBytes, raw_.data(), raw_.size());
    if (ZSTD_isError(n) != 0U) {
        // Only allocation can fail here: the destination has ZSTD_compressBound room.
        return spend(Error("compress frame", ENOMEM, ZSTD_getErrorName(n)));
    }
    store_le<std::uint32_t>(compressed_.data(), static_cast<std::uint32_t>(raw_.size()));
    store_le<std::uint32_t>(compressed_.data() + 4, static_cast<std::uint32_t>(n));
    raw_.clear();
    return emit(std::span(compressed_.data(), kFrameHeadBytes + n));
}

Result<void> Writer::finish() {
    if (spent_) {
        return Error("write archive", EINVAL, "an earlier error ended this archive");
    }
    if (chunks_ != header_.chunk_count) {
        return spend(Error("finish", EINVAL,
                           std::to_string(chunks_) + " chunks written, the header promised " +
                               std::to_string(header_.chunk_count)));
    }
    if (!raw_.empty()) {
        if (auto ok = flush_frame(); !ok) {
            return ok;
        }
    }
    std::byte trailer[kTrailerBytes];
    std::copy(kEndMagic.begin(), kEndMagic.end(), reinterpret_cast<std::uint8_t*>(trailer));
    const auto sum = digest_.digest();
    std::copy(sum.begin(), sum.end(), reinterpret_cast<std::uint8_t*>(trailer + kEndMagic.size()));
    spent_ = true;  // the digest is finished: nothing may follow
    if (auto ok = sink_(trailer); !ok) {
        return std::move(ok).error().within("write archive");
    }
    bytes_written_ += kTrailerBytes;
    return success();
}

}  // namespace wrenn::archive
