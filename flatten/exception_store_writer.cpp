#include "flatten/exception_store_writer.hpp"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <string>

#include "common/little_endian.hpp"

namespace wrenn::flatten {
namespace {

bool all_zero(std::span<const std::byte> b) {
    return b.empty() ||
           (b[0] == std::byte{0} && std::memcmp(b.data(), b.data() + 1, b.size() - 1) == 0);
}

}  // namespace

std::array<std::byte, 16> encode_store_header(const StoreHeader& h) {
    std::array<std::byte, 16> out{};
    store_le<std::uint32_t>(out.data(), h.magic);
    store_le<std::uint32_t>(out.data() + 4, h.valid);
    store_le<std::uint32_t>(out.data() + 8, h.version);
    store_le<std::uint32_t>(out.data() + 12, h.chunk_sectors);
    return out;
}

std::uint64_t data_chunk_location(std::uint64_t chunk_bytes, std::uint64_t n) {
    const std::uint64_t per_area = chunk_bytes / kDiskExceptionBytes;
    return area_location(chunk_bytes, n / per_area) + 1 + n % per_area;
}

std::uint64_t min_store_bytes(std::uint64_t chunk_bytes, std::uint64_t chunks) {
    const std::uint64_t per_area = chunk_bytes / kDiskExceptionBytes;
    std::uint64_t last = area_location(chunk_bytes, chunks / per_area);
    if (chunks > 0) {
        last = std::max(last, data_chunk_location(chunk_bytes, chunks - 1));
    }
    return (last + 1) * chunk_bytes;
}

ExceptionStoreWriter::ExceptionStoreWriter(WriteAt write, std::uint64_t chunk_bytes,
                                           std::uint64_t origin_bytes, std::uint64_t cow_bytes)
    : write_(std::move(write)),
      chunk_bytes_(chunk_bytes),
      per_area_(chunk_bytes / kDiskExceptionBytes),
      origin_chunks_((origin_bytes + chunk_bytes - 1) / chunk_bytes),
      cow_chunks_(cow_bytes / chunk_bytes),
      area_(chunk_bytes) {}

Result<ExceptionStoreWriter> ExceptionStoreWriter::create(WriteAt write, std::uint64_t chunk_bytes,
                                                          std::uint64_t origin_bytes,
                                                          std::uint64_t cow_bytes) {
    const std::string action = "write exception store";
    if (chunk_bytes < kSectorBytes || !std::has_single_bit(chunk_bytes) ||
        chunk_bytes > kMaxChunkSectors * kSectorBytes) {
        return Error(action, EINVAL,
                     "chunk size " + std::to_string(chunk_bytes) +
                         " bytes is not a power of two from 512 to " +
                         std::to_string(kMaxChunkSectors * kSectorBytes));
    }
    if (cow_bytes < min_store_bytes(chunk_bytes, 0)) {
        return Error(action, ENOSPC,
                     "a CoW of " + std::to_string(cow_bytes) + " bytes cannot hold a store of " +
                         std::to_string(chunk_bytes) + "-byte chunks (at least " +
                         std::to_string(min_store_bytes(chunk_bytes, 0)) + " bytes)");
    }
    return ExceptionStoreWriter(std::move(write), chunk_bytes, origin_bytes, cow_bytes);
}

Error ExceptionStoreWriter::spend(Error error) {
    spent_ = true;
    return std::move(error).within("write exception store");
}

Result<void> ExceptionStoreWriter::add_chunk(std::uint64_t old_chunk,
                                             std::span<const std::byte> data) {
    if (spent_) {
        return Error("write exception store", EINVAL, "an earlier error ended this store");
    }
    const std::string action = "add chunk " + std::to_string(old_chunk);
    if (data.size() != chunk_bytes_) {
        return spend(Error(
            action, EINVAL,
            std::to_string(data.size()) + " bytes, expected " + std::to_string(chunk_bytes_)));
    }
    if (old_chunk >= origin_chunks_) {
        return spend(Error(action, EINVAL,
                           "past the origin's " + std::to_string(origin_chunks_) + " chunks"));
    }
    if (old_chunk < next_min_chunk_) {
        return spend(Error(action, EINVAL,
                           "not after the previous chunk " + std::to_string(next_min_chunk_ - 1)));
    }
    const std::uint64_t new_chunk = data_chunk_location(chunk_bytes_, count_);
    if (min_store_bytes(chunk_bytes_, count_ + 1) > cow_chunks_ * chunk_bytes_) {
        return spend(Error(action, ENOSPC,
                           "the CoW of " + std::to_string(cow_chunks_) + " chunks is full after " +
                               std::to_string(count_) + " chunks"));
    }
    if (!all_zero(data)) {
        if (auto ok = write_(new_chunk * chunk_bytes_, data); !ok) {
            return spend(std::move(ok).error());
        }
    }
    std::byte* e = area_.data() + (count_ % per_area_) * kDiskExceptionBytes;
    store_le<std::uint64_t>(e, old_chunk);
    store_le<std::uint64_t>(e + 8, new_chunk);
    next_min_chunk_ = old_chunk + 1;
    ++count_;
    if (count_ % per_area_ == 0) {
        const std::uint64_t area = count_ / per_area_ - 1;
        if (auto ok = write_(area_location(chunk_bytes_, area) * chunk_bytes_, area_); !ok) {
            return spend(std::move(ok).error());
        }
        std::fill(area_.begin(), area_.end(), std::byte{0});
    }
    return success();
}

Result<void> ExceptionStoreWriter::finish() {
    if (spent_) {
        return Error("write exception store", EINVAL, "an earlier error ended this store");
    }
    spent_ = true;
    // A partly filled area ends at its first zero entry; a full last area is followed by the
    // next area's metadata chunk, which the target's zeros already make empty.
    if (count_ % per_area_ != 0) {
        const std::uint64_t area = count_ / per_area_;
        if (auto ok = write_(area_location(chunk_bytes_, area) * chunk_bytes_, area_); !ok) {
            return std::move(ok).error().within("write exception store");
        }
    }
    StoreHeader header;
    header.chunk_sectors = static_cast<std::uint32_t>(chunk_bytes_ / kSectorBytes);
    if (auto ok = write_(0, encode_store_header(header)); !ok) {
        return std::move(ok).error().within("write exception store");
    }
    return success();
}

}  // namespace wrenn::flatten
