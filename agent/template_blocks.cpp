#include "agent/template_blocks.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/endian/conversion.hpp>
#include <cerrno>
#include <cstring>

#include "common/digest.hpp"

namespace wrenn::agent {

namespace {

constexpr std::string_view kListMagic = "WRENNBLK";
constexpr std::size_t kListHeaderBytes = 24;
// Reads go in runs of up to this many bytes (64 blocks), hashed a block at a time.
constexpr std::uint64_t kReadBytes = 4 << 20;
// A background read looks whether the agent is stopping every this many blocks (64 MiB).
constexpr std::uint64_t kStopCheckBlocks = 1024;
// How far ahead of the hashing rehash_blocks asks the kernel to read.
constexpr std::uint64_t kPrefetchBytes = 64 << 20;

std::string header_bytes(std::uint64_t image_bytes) {
    std::string out(kListMagic);
    std::uint64_t le[2] = {boost::endian::native_to_little(kDigestBlockBytes),
                           boost::endian::native_to_little(image_bytes)};
    out.append(reinterpret_cast<const char*>(le), sizeof le);
    return out;
}

Hash256 hash_of(const void* data, std::size_t size) {
    Sha256 h;
    h.update(data, size);
    return h.digest();
}

// Reads exactly `size` bytes at `offset`; a short read means the file shrank (ESTALE).
Result<void> read_exactly(int fd, char* buffer, std::uint64_t size, std::uint64_t offset,
                          const std::string& action) {
    std::uint64_t done = 0;
    while (done < size) {
        const ssize_t n = ::pread(fd, buffer + done, size - done, static_cast<off_t>(offset + done));
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return Error(action, errno);
        }
        if (n == 0) {
            return Error(action, ESTALE, "the image shrank while it was read; is it being written?");
        }
        done += static_cast<std::uint64_t>(n);
    }
    return {};
}

// Hashes blocks [first, end) of the image into list, reading them in runs of kReadBytes.
Result<void> hash_range(int fd, BlockList& list, std::uint64_t first, std::uint64_t end,
                        std::vector<char>& buffer, const std::string& action) {
    const std::uint64_t size = list.image_bytes;
    while (first < end) {
        const std::uint64_t run = std::min(end - first, kReadBytes / kDigestBlockBytes);
        const std::uint64_t offset = first * kDigestBlockBytes;
        const std::uint64_t bytes = std::min(run * kDigestBlockBytes, size - offset);
        if (auto read = read_exactly(fd, buffer.data(), bytes, offset, action); !read) {
            return read;
        }
        for (std::uint64_t i = 0; i < run; ++i) {
            const std::uint64_t at = i * kDigestBlockBytes;
            list.hashes[first + i] =
                hash_of(buffer.data() + at, std::min(kDigestBlockBytes, bytes - at));
        }
        first += run;
    }
    return {};
}

Result<void> check_unchanged(const std::string& path, const TemplateImage& image,
                             const std::string& action) {
    auto now = inspect_open_template(image.fd.get(), path);
    if (!now) {
        return std::move(now).error().within(action);
    }
    if (!now->same_file_state(image.identity)) {
        return Error(action, ESTALE,
                     "the image changed while it was read (" + now->describe_change_from(image.identity) +
                         "); is it being written? Replace templates by renaming a new file over them");
    }
    return {};
}

BlockList all_zero(std::uint64_t image_bytes) {
    BlockList list;
    list.image_bytes = image_bytes;
    const std::uint64_t n = block_count(image_bytes);
    list.hashes.assign(n, zero_block_hash(kDigestBlockBytes));
    if (n > 0 && image_bytes % kDigestBlockBytes != 0) {
        list.hashes.back() = zero_block_hash(image_bytes % kDigestBlockBytes);
    }
    return list;
}

bool is_lower_hex(std::string_view s) {
    return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
               return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
           });
}

}  // namespace

std::uint64_t block_count(std::uint64_t image_bytes) {
    return (image_bytes + kDigestBlockBytes - 1) / kDigestBlockBytes;
}

Hash256 zero_block_hash(std::uint64_t bytes) {
    static const Hash256 full = [] {
        const std::vector<char> zeros(kDigestBlockBytes, 0);
        return hash_of(zeros.data(), zeros.size());
    }();
    if (bytes == kDigestBlockBytes) {
        return full;
    }
    const std::vector<char> zeros(bytes, 0);
    return hash_of(zeros.data(), zeros.size());
}

std::string BlockList::encode() const {
    std::string out = header_bytes(image_bytes);
    out.append(reinterpret_cast<const char*>(hashes.data()), hashes.size() * sizeof(Hash256));
    return out;
}

Result<BlockList> BlockList::decode(std::string_view bytes) {
    const std::string action = "read a template's block list";
    if (bytes.size() < kListHeaderBytes || bytes.substr(0, kListMagic.size()) != kListMagic) {
        return Error(action, EINVAL, "no WRENNBLK header");
    }
    std::uint64_t le[2];
    std::memcpy(le, bytes.data() + kListMagic.size(), sizeof le);
    BlockList list;
    list.image_bytes = boost::endian::little_to_native(le[1]);
    if (boost::endian::little_to_native(le[0]) != kDigestBlockBytes) {
        return Error(action, EINVAL, "block size is not 64 KiB");
    }
    const std::uint64_t n = block_count(list.image_bytes);
    if ((bytes.size() - kListHeaderBytes) != n * sizeof(Hash256)) {
        return Error(action, EINVAL,
                     "holds " + std::to_string(bytes.size() - kListHeaderBytes) + " bytes of hashes, " +
                         std::to_string(n) + " blocks need " + std::to_string(n * sizeof(Hash256)));
    }
    list.hashes.resize(n);
    std::memcpy(list.hashes.data(), bytes.data() + kListHeaderBytes, n * sizeof(Hash256));
    return list;
}

std::string BlockList::digest() const {
    Sha256 h;
    h.update(header_bytes(image_bytes));
    h.update(hashes.data(), hashes.size() * sizeof(Hash256));
    return std::string(kBlocksAlgorithm) + ":" + h.hex_digest();
}

std::optional<ParsedDigest> parse_digest(std::string_view digest) {
    const auto colon = digest.find(':');
    if (colon == std::string_view::npos) {
        if (is_lower_hex(digest)) {
            return ParsedDigest{std::string(kWholeAlgorithm), std::string(digest)};
        }
        return std::nullopt;
    }
    const std::string_view algorithm = digest.substr(0, colon);
    const std::string_view hex = digest.substr(colon + 1);
    if ((algorithm != kBlocksAlgorithm && algorithm != kWholeAlgorithm) || !is_lower_hex(hex)) {
        return std::nullopt;
    }
    return ParsedDigest{std::string(algorithm), std::string(hex)};
}

Result<BlockList> hash_blocks(const std::string& path, const TemplateImage& image,
                              const std::atomic<bool>* stop) {
    const std::string action = "compute the digest of template " + path;
    const int fd = image.fd.get();
    BlockList list = all_zero(image.identity.size_bytes);
    const std::uint64_t size = list.image_bytes;
    std::vector<char> buffer(kReadBytes);
    std::uint64_t next = 0;  // the first block not yet settled
    while (next < list.hashes.size()) {
        const off_t data = ::lseek(fd, static_cast<off_t>(next * kDigestBlockBytes), SEEK_DATA);
        if (data < 0) {
            if (errno == ENXIO) {
                break;  // nothing but a hole to the end
            }
            return Error(action + ": seek data", errno);
        }
        off_t hole = ::lseek(fd, data, SEEK_HOLE);
        if (hole < 0) {
            return Error(action + ": seek hole", errno);
        }
        const auto end_byte = std::min<std::uint64_t>(static_cast<std::uint64_t>(hole), size);
        const std::uint64_t first = static_cast<std::uint64_t>(data) / kDigestBlockBytes;
        const std::uint64_t end = (end_byte + kDigestBlockBytes - 1) / kDigestBlockBytes;
        if (first >= end) {
            break;  // data past the size the identity names: the size check below fails
        }
        // A data range is read in pieces so that a stop is seen within one piece's read.
        for (std::uint64_t at = first; at < end; at += kStopCheckBlocks) {
            if (stop != nullptr && stop->load()) {
                return Error(action, ECANCELED, "the agent is stopping");
            }
            const std::uint64_t until = std::min(end, at + kStopCheckBlocks);
            if (auto hashed = hash_range(fd, list, at, until, buffer, action); !hashed) {
                return std::move(hashed).error();
            }
        }
        next = end;
    }
    if (auto same = check_unchanged(path, image, action); !same) {
        return std::move(same).error();
    }
    return list;
}

Result<BlockList> rehash_blocks(const std::string& path, const TemplateImage& image,
                                BlockList base, std::span<const std::uint64_t> blocks) {
    const std::string action = "update the digest of template " + path;
    if (base.image_bytes != image.identity.size_bytes) {
        return Error(action, EINVAL,
                     "the block list is of " + std::to_string(base.image_bytes) + " bytes, the image " +
                         std::to_string(image.identity.size_bytes));
    }
    // Runs of consecutive blocks, each read at once.
    struct Run {
        std::uint64_t first, end;
    };
    std::vector<Run> runs;
    for (std::size_t i = 0; i < blocks.size();) {
        std::size_t j = i + 1;
        while (j < blocks.size() && blocks[j] == blocks[j - 1] + 1) {
            ++j;
        }
        if (blocks[j - 1] >= base.hashes.size()) {
            return Error(action, EINVAL, "block " + std::to_string(blocks[j - 1]) + " is past the end");
        }
        runs.push_back({blocks[i], blocks[j - 1] + 1});
        i = j;
    }
    // Scattered blocks are read one request at a time; telling the kernel what comes next
    // (WILLNEED, up to kPrefetchBytes ahead) lets it keep the disk's queue full instead.
    const int fd = image.fd.get();
    const std::uint64_t size = base.image_bytes;
    auto bytes_of = [&](const Run& r) {
        return std::min(r.end * kDigestBlockBytes, size) - r.first * kDigestBlockBytes;
    };
    std::size_t ahead = 0;
    std::uint64_t prefetched = 0;
    std::vector<char> buffer(kReadBytes);
    for (std::size_t k = 0; k < runs.size(); ++k) {
        while (ahead < runs.size() && (ahead <= k || prefetched < kPrefetchBytes)) {
            (void)::posix_fadvise(fd, static_cast<off_t>(runs[ahead].first * kDigestBlockBytes),
                                  static_cast<off_t>(bytes_of(runs[ahead])), POSIX_FADV_WILLNEED);
            prefetched += bytes_of(runs[ahead]);
            ++ahead;
        }
        if (auto hashed = hash_range(fd, base, runs[k].first, runs[k].end, buffer, action);
            !hashed) {
            return std::move(hashed).error();
        }
        prefetched -= bytes_of(runs[k]);
    }
    if (auto same = check_unchanged(path, image, action); !same) {
        return std::move(same).error();
    }
    return base;
}

Result<std::string> hash_whole(const std::string& path, const TemplateImage& image) {
    const std::string action = "compute the sha256 of template " + path;
    Sha256 hash;
    std::vector<char> buffer(1 << 20);
    std::uint64_t offset = 0;
    const std::uint64_t size = image.identity.size_bytes;
    while (offset < size) {
        const std::uint64_t n = std::min<std::uint64_t>(buffer.size(), size - offset);
        if (auto read = read_exactly(image.fd.get(), buffer.data(), n, offset, action); !read) {
            return std::move(read).error();
        }
        hash.update(buffer.data(), n);
        offset += n;
    }
    if (auto same = check_unchanged(path, image, action); !same) {
        return std::move(same).error();
    }
    return std::string(kWholeAlgorithm) + ":" + hash.hex_digest();
}

std::vector<std::uint64_t> blocks_of_chunks(std::span<const std::uint64_t> chunks,
                                            std::uint64_t chunk_bytes, std::uint64_t image_bytes) {
    std::vector<std::uint64_t> blocks;
    const std::uint64_t count = block_count(image_bytes);
    for (const std::uint64_t chunk : chunks) {
        const std::uint64_t start = chunk * chunk_bytes;
        if (start >= image_bytes) {
            continue;
        }
        const std::uint64_t last = std::min(start + chunk_bytes, image_bytes) - 1;
        for (std::uint64_t b = start / kDigestBlockBytes;
             b <= last / kDigestBlockBytes && b < count; ++b) {
            blocks.push_back(b);
        }
    }
    std::sort(blocks.begin(), blocks.end());
    blocks.erase(std::unique(blocks.begin(), blocks.end()), blocks.end());
    return blocks;
}

}  // namespace wrenn::agent
