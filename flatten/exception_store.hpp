#pragma once

// Reading dm-snapshot's persistent exception store (drivers/md/dm-snap-persistent.c) from
// userspace: pure parsing over a reader callback, so that every rule is unit-tested without
// a kernel. Safe only on a CoW whose dm device was removed cleanly (no exceptions in flight).

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.hpp"
#include "common/result.hpp"

namespace wrenn::flatten {

// On-disk constants, all little-endian (dm-snap-persistent.c).
inline constexpr std::uint32_t kSnapMagic = 0x70416e53;  // "SnAp"
inline constexpr std::uint32_t kSnapDiskVersion = 1;
inline constexpr std::uint64_t kSectorBytes = 512;
inline constexpr std::uint64_t kDiskExceptionBytes = 16;  // le64 old_chunk, le64 new_chunk
// dm accepts any power of two; we refuse more than 16 MiB so that one metadata chunk always
// fits a sane buffer (LVM's own limit is 512 KiB).
inline constexpr std::uint32_t kMaxChunkSectors = 32768;

struct Exception {
    std::uint64_t old_chunk;  // origin chunk
    std::uint64_t new_chunk;  // CoW chunk holding its current data
};

// What a paused CoW file says about its snapshot.
struct ExceptionStore {
    std::uint32_t chunk_sectors = 0;
    bool valid = false;
    bool empty = false;  // zero magic: the snapshot was never used, the origin is the image
    std::vector<Exception> exceptions;  // sorted by old_chunk
    std::uint64_t chunk_bytes() const { return chunk_sectors * 512ull; }
};

// read(offset, buf) -> bytes read (short read = end of file), or Error.
using ReadAt = std::function<Result<std::size_t>(std::uint64_t offset, std::span<std::byte> buf)>;
// write(offset, bytes) -> all of bytes written at offset, or Error.
using WriteAt = std::function<Result<void>(std::uint64_t offset, std::span<const std::byte> bytes)>;

// Chunk index of metadata area `area` for a chunk size of chunk_bytes: the header is chunk 0,
// then each area is one metadata chunk followed by the chunk_bytes/16 data chunks it indexes.
std::uint64_t area_location(std::uint64_t chunk_bytes, std::uint64_t area);
// True when CoW chunk `chunk` holds metadata (the header or an area's exception table).
bool is_metadata_chunk(std::uint64_t chunk_bytes, std::uint64_t chunk);

// Checks everything before anything is applied: magic, version 1, the valid flag (invalid ->
// an error with errno 0 saying the kernel invalidated the snapshot), chunk size a power of two
// and sane, every old_chunk < origin chunks, every new_chunk inside the CoW and not a metadata
// chunk, no old_chunk or new_chunk twice, a truncated file. Reads only metadata chunks.
// Every error but "invalidated" carries an errno (EUCLEAN for a corrupt store), so that
// store_marked_invalid() can decide on the code alone.
Result<ExceptionStore> read_exception_store(const ReadAt& read, std::uint64_t cow_bytes,
                                            std::uint64_t origin_bytes);
// The same, naming the store in errors ("read exception store of /x/cow: ...").
Result<ExceptionStore> read_exception_store(const ReadAt& read, std::uint64_t cow_bytes,
                                            std::uint64_t origin_bytes, std::string_view name);
// Opens cow_path O_RDONLY|O_CLOEXEC and reads its store with pread.
Result<ExceptionStore> read_exception_store_file(const std::string& cow_path,
                                                 std::uint64_t origin_bytes);

// True for the "kernel invalidated the snapshot" error of read_exception_store and flatten:
// the only error of this library with errno 0.
bool store_marked_invalid(const Error&);

}  // namespace wrenn::flatten
