#pragma once

// Test-only: builds dm-snapshot persistent CoW images in memory, laid out as
// drivers/md/dm-snap-persistent.c writes them, so that the reader is tested against the
// format and not against itself. Unlike the production ExceptionStoreWriter (which it uses for
// the layout), it can place exceptions anywhere and write any header, broken ones included.

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "flatten/exception_store.hpp"
#include "flatten/exception_store_writer.hpp"

namespace wrenn::flatten::testing {

using CowHeader = StoreHeader;

inline void put_le(std::byte* p, std::uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) {
        p[i] = static_cast<std::byte>((v >> (8 * i)) & 0xff);
    }
}

// CoW chunks in the order the kernel hands them out: from 2, skipping metadata chunks.
inline std::vector<Exception> allocate_like_kernel(const std::vector<std::uint64_t>& old_chunks,
                                                   std::uint64_t chunk_bytes = 4096) {
    std::vector<Exception> out;
    for (auto old : old_chunks) {
        out.push_back({old, data_chunk_location(chunk_bytes, out.size())});
    }
    return out;
}

// A CoW of cow_chunks chunks: header, then the exceptions in commit order, 256 (at 4 KiB) per
// area, each area's metadata chunk at 1 + 257 * i. Data chunks are left zero.
inline std::vector<std::byte> make_cow(const std::vector<Exception>& exceptions,
                                       std::uint64_t cow_chunks, CowHeader h = {}) {
    const std::uint64_t chunk = std::uint64_t{h.chunk_sectors ? h.chunk_sectors : 8} * 512;
    std::vector<std::byte> cow(cow_chunks * chunk);
    const auto header = encode_store_header(h);
    std::copy(header.begin(), header.end(), cow.begin());
    const std::uint64_t per_area = chunk / 16;
    for (std::size_t i = 0; i < exceptions.size(); ++i) {
        const std::uint64_t at = area_location(chunk, i / per_area) * chunk + (i % per_area) * 16;
        put_le(cow.data() + at, exceptions[i].old_chunk, 8);
        put_le(cow.data() + at + 8, exceptions[i].new_chunk, 8);
    }
    return cow;
}

// Fills CoW chunk `chunk` with a pattern derived from `seed`.
inline void fill_chunk(std::vector<std::byte>& cow, std::uint64_t chunk, std::uint8_t seed,
                       std::uint64_t chunk_bytes = 4096) {
    for (std::uint64_t i = 0; i < chunk_bytes; ++i) {
        cow[chunk * chunk_bytes + i] = static_cast<std::byte>(seed + i * 7 + (i >> 8));
    }
}

// A reader over bytes in memory that records every offset it was asked for.
struct MemoryReader {
    std::span<const std::byte> bytes;
    std::vector<std::uint64_t>* offsets = nullptr;

    Result<std::size_t> operator()(std::uint64_t offset, std::span<std::byte> buf) const {
        if (offsets != nullptr) {
            offsets->push_back(offset);
        }
        if (offset >= bytes.size()) {
            return std::size_t{0};
        }
        const std::size_t n = std::min<std::size_t>(buf.size(), bytes.size() - offset);
        std::copy_n(bytes.begin() + static_cast<std::ptrdiff_t>(offset), n, buf.begin());
        return n;
    }
};

}  // namespace wrenn::flatten::testing
