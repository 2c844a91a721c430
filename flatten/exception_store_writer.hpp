#pragma once

// Writing dm-snapshot's persistent exception store (drivers/md/dm-snap-persistent.c): a CoW
// file whose snapshot holds given chunks, laid out as the kernel would have laid it out had
// those chunks been written through the snapshot device in origin order. Pure over a writer
// callback, so that every rule is unit-tested (and read back) without a kernel.

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "common/result.hpp"
#include "flatten/exception_store.hpp"

namespace wrenn::flatten {

// The store's 16-byte header (chunk 0); the defaults are a valid store of 4 KiB chunks.
struct StoreHeader {
    std::uint32_t magic = kSnapMagic;
    std::uint32_t valid = 1;
    std::uint32_t version = kSnapDiskVersion;
    std::uint32_t chunk_sectors = 8;
};
std::array<std::byte, 16> encode_store_header(const StoreHeader& header);

// The CoW chunk of the n-th data chunk (from 0), in the order the kernel hands them out: from
// chunk 2, skipping each area's metadata chunk.
std::uint64_t data_chunk_location(std::uint64_t chunk_bytes, std::uint64_t n);
// The smallest CoW file, in bytes, that holds `chunks` exceptions written by
// ExceptionStoreWriter: their data chunks, and the metadata chunk of the first area that is not
// full (the kernel stops reading at it, and refuses a store whose next area it cannot read).
std::uint64_t min_store_bytes(std::uint64_t chunk_bytes, std::uint64_t chunks);

// One exception store being written over a target that reads as zeros (a new file truncated
// to cow_bytes): add_chunk() for each chunk in increasing origin order, then finish(). Data
// chunks are written as they come and all-zero ones are left as holes; each metadata area is
// written when it fills, the header last, so that a store cut short has no header (and an
// importer throws it away anyway). Memory: one metadata chunk. After an error the writer is
// spent. Move-only.
class ExceptionStoreWriter {
  public:
    // chunk_bytes: a power of two from 512 bytes to kMaxChunkSectors sectors; cow_bytes: the
    // size of the target, which bounds how many chunks fit (ENOSPC past that).
    static Result<ExceptionStoreWriter> create(WriteAt write, std::uint64_t chunk_bytes,
                                               std::uint64_t origin_bytes, std::uint64_t cow_bytes);

    // data: exactly chunk_bytes; old_chunk above the previous one and inside the origin.
    Result<void> add_chunk(std::uint64_t old_chunk, std::span<const std::byte> data);
    // Writes the last, partly filled area and the header.
    Result<void> finish();

    [[nodiscard]] std::uint64_t chunks() const { return count_; }

  private:
    ExceptionStoreWriter(WriteAt write, std::uint64_t chunk_bytes, std::uint64_t origin_bytes,
                         std::uint64_t cow_bytes);
    Error spend(Error error);

    WriteAt write_;
    std::uint64_t chunk_bytes_;
    std::uint64_t per_area_;
    std::uint64_t origin_chunks_;
    std::uint64_t cow_chunks_;
    std::vector<std::byte> area_;  // the metadata chunk being filled
    std::uint64_t count_ = 0;
    std::uint64_t next_min_chunk_ = 0;
    bool spent_ = false;
};

}  // namespace wrenn::flatten
