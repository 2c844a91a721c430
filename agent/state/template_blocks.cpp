#include "agent/state/template_blocks.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/endian/conversion.hpp>
#include <cerrno>
#include <cstring>
#include <thread>

#include "common/digest.hpp"
#include "flatten/image_copy.hpp"

namespace wrenn::agent {

namespace {

constexpr std::string_view kListMagic = "WRENNBLK";
constexpr std::size_t kListHeaderBytes = 32;
// Data is read in runs of up to this many groups (4 MiB).
constexpr std::uint64_t kGroupsPerRead = 8;
// A background read looks whether the agent is stopping every this many groups (64 MiB).
constexpr std::uint64_t kStopCheckGroups = 128;
// How far ahead of the hashing rehash_blocks asks the kernel to read changed leaves.
constexpr std::uint64_t kPrefetchBytes = 64 << 20;
// Threads that rehash a flatten's changed groups (the client waits for them).
constexpr unsigned kRehashThreads = 4;

std::string header_bytes(std::uint64_t image_bytes) {
    std::string out(kListMagic);
    const std::uint64_t le[3] = {boost::endian::native_to_little(kLeafBytes),
                                 boost::endian::native_to_little(kLeavesPerGroup),
                                 boost::endian::native_to_little(image_bytes)};
    out.append(reinterpret_cast<const char*>(le), sizeof le);
    return out;
}

Hash256 hash_of(const void* data, std::size_t size) {
    Sha256 h;
    h.update(data, size);
    return h.digest();
}

// Bytes of group g of an image of `size` bytes, and its number of leaves.
std::uint64_t group_bytes(std::uint64_t size, std::uint64_t g) {
    return std::min(kGroupBytes, size - g * kGroupBytes);
}
std::uint64_t leaves_in(std::uint64_t bytes) {
    return (bytes + kLeafBytes - 1) / kLeafBytes;
}

const Hash256& zero_leaf_hash() {
    static const Hash256 h = [] {
        const std::vector<char> zeros(kLeafBytes, 0);
        return hash_of(zeros.data(), zeros.size());
    }();
    return h;
}

// A leaf page of `bytes` of zeros: each leaf's hash, the last one of what is left.
std::vector<Hash256> zero_leaves(std::uint64_t bytes) {
    std::vector<Hash256> leaves(leaves_in(bytes), zero_leaf_hash());
    if (bytes % kLeafBytes != 0) {
        const std::vector<char> zeros(bytes % kLeafBytes, 0);
        leaves.back() = hash_of(zeros.data(), zeros.size());
    }
    return leaves;
}

// Reads exactly `size` bytes at `offset`; a short read means the file shrank (ESTALE).
Result<void> read_exactly(int fd, char* buffer, std::uint64_t size, std::uint64_t offset,
                          const std::string& action) {
    std::uint64_t done = 0;
    while (done < size) {
        const ssize_t n =
            ::pread(fd, buffer + done, size - done, static_cast<off_t>(offset + done));
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return Error(action, errno);
        }
        if (n == 0) {
            return Error(action, ESTALE,
                         "the image shrank while it was read; is it being written?");
        }
        done += static_cast<std::uint64_t>(n);
    }
    return {};
}

// Writes a run of leaf pages at `offset` of the leaf file (flatten's pwrite loop).
Result<void> write_pages(int leaves_fd, const Hash256* pages, std::uint64_t bytes,
                         std::uint64_t offset, const std::string& action) {
    auto written = flatten::pwrite_writer(leaves_fd, "the leaf file")(
        offset, std::as_bytes(std::span(pages, bytes / sizeof(Hash256))));
    if (!written) {
        return std::move(written).error().within(action);
    }
    return {};
}

// Hashes groups [first, end) of the image into list, reading them in runs of kGroupsPerRead,
// and writes their leaf pages to leaves_fd.
Result<void> hash_range(int fd, BlockList& list, std::uint64_t first, std::uint64_t end,
                        int leaves_fd, std::vector<char>& buffer, std::vector<Hash256>& pages,
                        const std::string& action) {
    const std::uint64_t size = list.image_bytes;
    while (first < end) {
        const std::uint64_t run = std::min(end - first, kGroupsPerRead);
        const std::uint64_t offset = first * kGroupBytes;
        const std::uint64_t bytes = std::min(run * kGroupBytes, size - offset);
        if (auto read = read_exactly(fd, buffer.data(), bytes, offset, action); !read) {
            return read;
        }
        std::fill(pages.begin(), pages.end(), Hash256{});
        for (std::uint64_t i = 0; i < run; ++i) {
            const std::uint64_t at = i * kGroupBytes;
            const std::uint64_t in_group = std::min(kGroupBytes, bytes - at);
            Hash256* page = &pages[i * kLeavesPerGroup];
            const std::uint64_t n = leaves_in(in_group);
            for (std::uint64_t leaf = 0; leaf < n; ++leaf) {
                const std::uint64_t from = at + leaf * kLeafBytes;
                page[leaf] = hash_of(buffer.data() + from, std::min(kLeafBytes, bytes - from));
            }
            list.groups[first + i] = hash_of(page, n * sizeof(Hash256));
        }
        if (leaves_fd >= 0) {
            if (auto written = write_pages(leaves_fd, pages.data(), run * kLeafPageBytes,
                                           first * kLeafPageBytes, action);
                !written) {
                return written;
            }
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
        return Error(
            action, ESTALE,
            "the image changed while it was read (" + now->describe_change_from(image.identity) +
                "); is it being written? Replace templates by renaming a new file over them");
    }
    return {};
}

BlockList all_holes(std::uint64_t image_bytes) {
    BlockList list;
    list.image_bytes = image_bytes;
    const std::uint64_t n = group_count(image_bytes);
    list.groups.assign(n, hole_group_hash(image_bytes, 0));
    if (n > 0) {
        list.groups.back() = hole_group_hash(image_bytes, n - 1);
    }
    return list;
}

bool is_lower_hex(std::string_view s) {
    return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
               return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
           });
}

// rehash_blocks for the leaves `changed` (whole groups of them): each group's stored page is
// read and checked, its changed leaves hashed, and the page and the group's hash replaced.
Result<void> rehash_part(int fd, std::uint64_t size, BlockList& base, int leaves_fd,
                         std::span<const std::uint64_t> changed, const std::string& action) {
    auto leaf_bytes = [&](std::uint64_t leaf) {
        return std::min(kLeafBytes, size - leaf * kLeafBytes);
    };
    // The changed leaves were just written, so usually cached; WILLNEED (up to kPrefetchBytes
    // ahead) keeps the disk's queue full when they are not.
    std::size_t ahead = 0;
    std::uint64_t prefetched = 0;
    std::vector<char> leaf(kLeafBytes);
    std::vector<Hash256> page(kLeavesPerGroup);
    for (std::size_t i = 0; i < changed.size();) {
        const std::uint64_t g = changed[i] / kLeavesPerGroup;
        const std::uint64_t n = leaves_in(group_bytes(size, g));
        const std::uint64_t page_bytes = n * sizeof(Hash256);
        // The group's leaf hashes as stored: a group in a hole has no page (its hashes are the
        // zero leaf's); a stored page must hash to the group's hash in the verified list.
        if (base.groups[g] == hole_group_hash(size, g)) {
            const auto zeros = zero_leaves(group_bytes(size, g));
            std::copy(zeros.begin(), zeros.end(), page.begin());
        } else {
            if (auto read =
                    read_exactly(leaves_fd, reinterpret_cast<char*>(page.data()), page_bytes,
                                 g * kLeafPageBytes, action + ": read the leaf file");
                !read) {
                return read;
            }
            if (hash_of(page.data(), page_bytes) != base.groups[g]) {
                return Error(action, EINVAL,
                             "the stored leaf hashes of group " + std::to_string(g) +
                                 " do not match the group list (a damaged state dir file)");
            }
        }
        for (; i < changed.size() && changed[i] / kLeavesPerGroup == g; ++i) {
            while (ahead < changed.size() && (ahead <= i || prefetched < kPrefetchBytes)) {
                (void)::posix_fadvise(fd, static_cast<off_t>(changed[ahead] * kLeafBytes),
                                      static_cast<off_t>(leaf_bytes(changed[ahead])),
                                      POSIX_FADV_WILLNEED);
                prefetched += leaf_bytes(changed[ahead]);
                ++ahead;
            }
            const std::uint64_t bytes = leaf_bytes(changed[i]);
            if (auto read = read_exactly(fd, leaf.data(), bytes, changed[i] * kLeafBytes, action);
                !read) {
                return read;
            }
            page[changed[i] % kLeavesPerGroup] = hash_of(leaf.data(), bytes);
            prefetched -= bytes;
        }
        base.groups[g] = hash_of(page.data(), page_bytes);
        if (auto written =
                write_pages(leaves_fd, page.data(), page_bytes, g * kLeafPageBytes, action);
            !written) {
            return written;
        }
    }
    return {};
}

}  // namespace

Result<void> BlockHasher::add(std::uint64_t leaf, std::span<const std::byte> data) {
    if ((last_leaf_ && leaf <= *last_leaf_) || data.size() > kLeafBytes || data.empty()) {
        return Error("hash an image's leaves", EINVAL,
                     "leaf " + std::to_string(leaf) + " of " + std::to_string(data.size()) +
                         " bytes is not after leaf " +
                         (last_leaf_ ? std::to_string(*last_leaf_) : std::string("none")) +
                         " or not 1 to 4096 bytes long");
    }
    const std::uint64_t group = leaf / kLeavesPerGroup;
    if (open_ && *open_ != group) {
        if (auto closed = close_group(kGroupBytes); !closed) {  // a later leaf: a whole group
            return closed;
        }
    }
    if (!open_) {
        open_ = group;
        added_.fill(false);
    }
    page_[leaf % kLeavesPerGroup] = hash_of(data.data(), data.size());
    added_[leaf % kLeavesPerGroup] = true;
    last_leaf_ = leaf;
    end_ = leaf * kLeafBytes + data.size();
    return {};
}

Result<void> BlockHasher::close_group(std::uint64_t bytes) {
    const std::uint64_t g = *open_;
    const auto zeros = zero_leaves(bytes);
    for (std::size_t i = 0; i < zeros.size(); ++i) {
        if (!added_[i]) {
            page_[i] = zeros[i];
        }
    }
    const std::uint64_t page_bytes = zeros.size() * sizeof(Hash256);
    groups_.resize(g, hole_group_hash(kGroupBytes, 0));  // whole groups between: holes
    groups_.push_back(hash_of(page_.data(), page_bytes));
    open_.reset();
    if (leaves_fd_ >= 0) {
        return write_pages(leaves_fd_, page_.data(), page_bytes, g * kLeafPageBytes,
                           "write a template's leaf hashes");
    }
    return {};
}

Result<BlockList> BlockHasher::finish(std::uint64_t image_bytes) {
    if (image_bytes < end_) {
        return Error("hash an image's leaves", EINVAL,
                     "the image is " + std::to_string(image_bytes) + " bytes, its leaves cover " +
                         std::to_string(end_));
    }
    if (open_) {
        const std::uint64_t bytes = group_bytes(image_bytes, *open_);
        if (*open_ * kGroupBytes + bytes < end_) {
            return Error("hash an image's leaves", EINVAL, "a leaf lies past the image's end");
        }
        if (auto closed = close_group(bytes); !closed) {
            return std::move(closed).error();
        }
    }
    BlockList list = all_holes(image_bytes);
    if (groups_.size() > list.groups.size()) {
        return Error("hash an image's leaves", EINVAL, "leaves lie past the image's end");
    }
    std::copy(groups_.begin(), groups_.end(), list.groups.begin());
    return list;
}

std::uint64_t group_count(std::uint64_t image_bytes) {
    return (image_bytes + kGroupBytes - 1) / kGroupBytes;
}

Hash256 hole_group_hash(std::uint64_t image_bytes, std::uint64_t group) {
    static const Hash256 full = [] {
        const auto leaves = zero_leaves(kGroupBytes);
        return hash_of(leaves.data(), leaves.size() * sizeof(Hash256));
    }();
    const std::uint64_t bytes = group_bytes(image_bytes, group);
    if (bytes == kGroupBytes) {
        return full;
    }
    const auto leaves = zero_leaves(bytes);
    return hash_of(leaves.data(), leaves.size() * sizeof(Hash256));
}

std::string BlockList::encode() const {
    std::string out = header_bytes(image_bytes);
    out.append(reinterpret_cast<const char*>(groups.data()), groups.size() * sizeof(Hash256));
    return out;
}

Result<BlockList> BlockList::decode(std::string_view bytes) {
    const std::string action = "read a template's group list";
    if (bytes.size() < kListHeaderBytes || bytes.substr(0, kListMagic.size()) != kListMagic) {
        return Error(action, EINVAL, "no WRENNBLK header");
    }
    std::uint64_t le[3];
    std::memcpy(le, bytes.data() + kListMagic.size(), sizeof le);
    if (boost::endian::little_to_native(le[0]) != kLeafBytes ||
        boost::endian::little_to_native(le[1]) != kLeavesPerGroup) {
        return Error(action, EINVAL, "not 4 KiB leaves in groups of 128");
    }
    BlockList list;
    list.image_bytes = boost::endian::little_to_native(le[2]);
    const std::uint64_t n = group_count(list.image_bytes);
    if ((bytes.size() - kListHeaderBytes) != n * sizeof(Hash256)) {
        return Error(action, EINVAL,
                     "holds " + std::to_string(bytes.size() - kListHeaderBytes) +
                         " bytes of hashes, " + std::to_string(n) + " groups need " +
                         std::to_string(n * sizeof(Hash256)));
    }
    list.groups.resize(n);
    std::memcpy(list.groups.data(), bytes.data() + kListHeaderBytes, n * sizeof(Hash256));
    return list;
}

std::string BlockList::digest() const {
    Sha256 h;
    h.update(header_bytes(image_bytes));
    h.update(groups.data(), groups.size() * sizeof(Hash256));
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

Result<BlockList> hash_blocks(const std::string& path, const TemplateImage& image, int leaves_fd,
                              const std::atomic<bool>* stop) {
    const std::string action = "compute the digest of template " + path;
    const int fd = image.fd.get();
    BlockList list = all_holes(image.identity.size_bytes);
    const std::uint64_t size = list.image_bytes;
    std::vector<char> buffer(kGroupsPerRead * kGroupBytes);
    std::vector<Hash256> pages(kGroupsPerRead * kLeavesPerGroup);
    std::uint64_t next = 0;  // the first group not yet settled
    while (next < list.groups.size()) {
        const off_t data = ::lseek(fd, static_cast<off_t>(next * kGroupBytes), SEEK_DATA);
        if (data < 0) {
            if (errno == ENXIO) {
                break;  // nothing but a hole to the end
            }
            return Error(action + ": seek data", errno);
        }
        const off_t hole = ::lseek(fd, data, SEEK_HOLE);
        if (hole < 0) {
            return Error(action + ": seek hole", errno);
        }
        const auto end_byte = std::min<std::uint64_t>(static_cast<std::uint64_t>(hole), size);
        const std::uint64_t first = static_cast<std::uint64_t>(data) / kGroupBytes;
        const std::uint64_t end = (end_byte + kGroupBytes - 1) / kGroupBytes;
        if (first >= end) {
            break;  // data past the size the identity names: the size check below fails
        }
        // A data range is read in pieces so that a stop is seen within one piece's read.
        for (std::uint64_t at = first; at < end; at += kStopCheckGroups) {
            if (stop != nullptr && stop->load()) {
                return Error(action, ECANCELED, "the agent is stopping");
            }
            const std::uint64_t until = std::min(end, at + kStopCheckGroups);
            if (auto hashed = hash_range(fd, list, at, until, leaves_fd, buffer, pages, action);
                !hashed) {
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

Result<BlockList> rehash_blocks(const std::string& path, const TemplateImage& image, BlockList base,
                                int leaves_fd, std::span<const std::uint64_t> changed) {
    const std::string action = "update the digest of template " + path;
    const std::uint64_t size = image.identity.size_bytes;
    if (base.image_bytes != size) {
        return Error(action, EINVAL,
                     "the group list is of " + std::to_string(base.image_bytes) +
                         " bytes, the image " + std::to_string(size));
    }
    const std::uint64_t leaves = leaves_in(size);
    if (!changed.empty() && changed.back() >= leaves) {
        return Error(action, EINVAL, "leaf " + std::to_string(changed.back()) + " is past the end");
    }
    // Groups are independent, so the changed leaves are split at group boundaries among up to
    // kRehashThreads threads: a flatten's client waits for this.
    const unsigned threads =
        std::clamp<unsigned>(std::thread::hardware_concurrency(), 1, kRehashThreads);
    std::vector<std::span<const std::uint64_t>> parts;
    for (std::size_t at = 0; at < changed.size();) {
        std::size_t end = std::min(changed.size(), at + (changed.size() + threads - 1) / threads);
        while (end < changed.size() &&
               changed[end] / kLeavesPerGroup == changed[end - 1] / kLeavesPerGroup) {
            ++end;
        }
        parts.push_back(changed.subspan(at, end - at));
        at = end;
    }
    std::vector<Result<void>> outcomes(parts.size(), success());
    {
        std::vector<std::jthread> helpers;
        for (std::size_t p = 1; p < parts.size(); ++p) {
            helpers.emplace_back([&, p] {
                outcomes[p] = rehash_part(image.fd.get(), size, base, leaves_fd, parts[p], action);
            });
        }
        if (!parts.empty()) {
            outcomes[0] = rehash_part(image.fd.get(), size, base, leaves_fd, parts[0], action);
        }
    }
    for (auto& outcome : outcomes) {
        if (!outcome) {
            return std::move(outcome).error();
        }
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

std::vector<std::uint64_t> leaves_of_chunks(std::span<const std::uint64_t> chunks,
                                            std::uint64_t chunk_bytes, std::uint64_t image_bytes) {
    std::vector<std::uint64_t> leaves;
    const std::uint64_t count = leaves_in(image_bytes);
    for (const std::uint64_t chunk : chunks) {
        const std::uint64_t start = chunk * chunk_bytes;
        if (start >= image_bytes) {
            continue;
        }
        const std::uint64_t last = std::min(start + chunk_bytes, image_bytes) - 1;
        for (std::uint64_t l = start / kLeafBytes; l <= last / kLeafBytes && l < count; ++l) {
            leaves.push_back(l);
        }
    }
    std::sort(leaves.begin(), leaves.end());
    leaves.erase(std::unique(leaves.begin(), leaves.end()), leaves.end());
    return leaves;
}

}  // namespace wrenn::agent
