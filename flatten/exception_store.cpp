#include "flatten/exception_store.hpp"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "common/little_endian.hpp"
#include "flatten/image_copy.hpp"

namespace wrenn::flatten {
namespace {

// The kernel's own word for a corrupt on-disk structure (EFSCORRUPTED is EUCLEAN).
constexpr int kCorrupt = EUCLEAN;

std::string hex32(std::uint32_t v) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "0x%08x", v);
    return buf;
}

// Reads until buf is full or the reader reports end of file.
Result<std::size_t> read_full(const ReadAt& read, std::uint64_t offset, std::span<std::byte> buf) {
    std::size_t done = 0;
    while (done < buf.size()) {
        auto got = read(offset + done, buf.subspan(done));
        if (!got) {
            return std::move(got).error();
        }
        if (*got == 0) {
            break;
        }
        done += *got;
    }
    return done;
}

}  // namespace

std::uint64_t area_location(std::uint64_t chunk_bytes, std::uint64_t area) {
    const std::uint64_t per_area = chunk_bytes / kDiskExceptionBytes;
    return 1 + (per_area + 1) * area;
}

bool is_metadata_chunk(std::uint64_t chunk_bytes, std::uint64_t chunk) {
    const std::uint64_t stride = chunk_bytes / kDiskExceptionBytes + 1;
    return chunk == 0 || chunk % stride == 1;
}

Result<ExceptionStore> read_exception_store(const ReadAt& read, std::uint64_t cow_bytes,
                                            std::uint64_t origin_bytes) {
    return read_exception_store(read, cow_bytes, origin_bytes, {});
}

Result<ExceptionStore> read_exception_store(const ReadAt& read, std::uint64_t cow_bytes,
                                            std::uint64_t origin_bytes, std::string_view name) {
    const std::string action = name.empty() ? std::string("read exception store")
                                            : "read exception store of " + std::string(name);
    auto corrupt = [&](std::string detail) { return Error(action, kCorrupt, std::move(detail)); };

    std::byte header[16];
    auto got = read_full(read, 0, header);
    if (!got) {
        return std::move(got).error().within(action);
    }
    if (*got < sizeof header) {
        return corrupt("truncated: the file ends at byte " + std::to_string(*got) +
                       ", inside the 16-byte header");
    }
    ExceptionStore store;
    const std::uint32_t magic = load_le<std::uint32_t>(header);
    if (magic == 0) {
        // A fresh CoW: dm writes the header on first activation, so this snapshot never
        // recorded an exception and the origin alone is the image.
        store.valid = true;
        store.empty = true;
        return store;
    }
    if (magic != kSnapMagic) {
        return corrupt("bad magic " + hex32(magic) + ", expected " + hex32(kSnapMagic) +
                       " (\"SnAp\"): not a dm-snapshot CoW file");
    }
    const std::uint32_t valid = load_le<std::uint32_t>(header + 4);
    const std::uint32_t version = load_le<std::uint32_t>(header + 8);
    const std::uint32_t chunk_sectors = load_le<std::uint32_t>(header + 12);
    // The kernel checks the chunk size (read_header), then the version, then the valid flag
    // (persistent_read_metadata); we keep its order so that we refuse what it would refuse.
    if (chunk_sectors == 0 || !std::has_single_bit(chunk_sectors) ||
        chunk_sectors > kMaxChunkSectors) {
        return corrupt("chunk size " + std::to_string(chunk_sectors) +
                       " sectors is not a power of two between 1 and " +
                       std::to_string(kMaxChunkSectors));
    }
    if (version != kSnapDiskVersion) {
        return corrupt("on-disk version " + std::to_string(version) + ", only version " +
                       std::to_string(kSnapDiskVersion) + " is known");
    }
    if (valid == 0) {
        // errno 0 marks this error for store_marked_invalid(); see the header.
        return Error(action, 0,
                     "the kernel invalidated this snapshot (an I/O error or a full CoW); its "
                     "data cannot be used");
    }
    store.chunk_sectors = chunk_sectors;
    store.valid = true;

    const std::uint64_t chunk_bytes = store.chunk_bytes();
    const std::uint64_t per_area = chunk_bytes / kDiskExceptionBytes;
    const std::uint64_t origin_chunks = (origin_bytes + chunk_bytes - 1) / chunk_bytes;
    const std::uint64_t cow_chunks = cow_bytes / chunk_bytes;

    // Each origin chunk has at most one exception and each CoW chunk holds at most one
    // chunk's data: one bit per chunk finds a second claim as it is read, in linear time.
    std::vector<bool> origin_claimed(origin_chunks), cow_claimed(cow_chunks);
    std::vector<std::byte> area(chunk_bytes);
    for (std::uint64_t index = 0;; ++index) {
        const std::uint64_t location = area_location(chunk_bytes, index);
        // Each metadata chunk lies inside the CoW: the kernel zeroes area i+1 on disk as soon
        // as area i fills, and fails to load a store whose next area it cannot read.
        if (location >= cow_chunks) {
            return corrupt("truncated: metadata area " + std::to_string(index) + " at chunk " +
                           std::to_string(location) + " lies past the end of the file (" +
                           std::to_string(cow_bytes) + " bytes)");
        }
        auto n = read_full(read, location * chunk_bytes, area);
        if (!n) {
            return std::move(n).error().within(action);
        }
        if (*n < chunk_bytes) {
            return corrupt("truncated: the file ends inside metadata area " +
                           std::to_string(index) + " (chunk " + std::to_string(location) + ")");
        }
        bool full = true;
        for (std::uint64_t i = 0; i < per_area; ++i) {
            const std::byte* p = area.data() + i * kDiskExceptionBytes;
            Exception e{load_le<std::uint64_t>(p), load_le<std::uint64_t>(p + 8)};
            // new_chunk 0 would point at the header: the kernel's end-of-list marker.
            if (e.new_chunk == 0) {
                full = false;
                break;
            }
            // Named only when it is wrong: a store holds a quarter of a million exceptions
            // per GiB written, and resume reads them all.
            auto where = [&] {
                return "exception " + std::to_string(i) + " of area " + std::to_string(index) +
                       " (" + std::to_string(e.old_chunk) + " -> " + std::to_string(e.new_chunk) +
                       ")";
            };
            if (e.old_chunk >= origin_chunks) {
                return corrupt(where() + ": origin chunk past the origin's " +
                               std::to_string(origin_chunks) + " chunks");
            }
            if (e.new_chunk >= cow_chunks) {
                return corrupt(where() + ": CoW chunk past the end of the file (" +
                               std::to_string(cow_chunks) + " chunks)");
            }
            if (is_metadata_chunk(chunk_bytes, e.new_chunk)) {
                return corrupt(where() + ": CoW chunk is a metadata chunk");
            }
            if (cow_claimed[e.new_chunk]) {
                return corrupt("CoW chunk " + std::to_string(e.new_chunk) +
                               " is the target of two exceptions");
            }
            if (origin_claimed[e.old_chunk]) {
                return corrupt("origin chunk " + std::to_string(e.old_chunk) +
                               " has two exceptions");
            }
            cow_claimed[e.new_chunk] = true;
            origin_claimed[e.old_chunk] = true;
            store.exceptions.push_back(e);
        }
        if (!full) {
            break;
        }
    }

    std::sort(store.exceptions.begin(), store.exceptions.end(),
              [](const Exception& a, const Exception& b) { return a.old_chunk < b.old_chunk; });
    return store;
}

Result<ExceptionStore> read_exception_store_file(const std::string& cow_path,
                                                 std::uint64_t origin_bytes) {
    auto file = open_read_only(cow_path);
    if (!file) {
        return std::move(file).error();
    }
    return read_exception_store(pread_reader(file->fd.get(), cow_path), file->size, origin_bytes,
                                cow_path);
}

bool store_marked_invalid(const Error& error) {
    return error.code() == 0;
}

}  // namespace wrenn::flatten
