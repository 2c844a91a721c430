#pragma once

// A template's digest that updates in O(changed) and is computed in O(allocated).
//
// The image is cut into 4 KiB leaves (the snapshot's chunk; the last one may be shorter) and
// the leaves into groups of 128 (512 KiB). A group's hash is the SHA-256 of its leaves'
// SHA-256s; the digest is the SHA-256 of a fixed header (the leaf and group sizes, the image
// size) followed by the group hashes. So:
// - a group that lies in a hole hashes to a known constant without being read
//   (SEEK_DATA/SEEK_HOLE): reading an image costs what it holds;
// - a flatten, which changes whole chunks, hashes only the chunks it wrote and rehashes the
//   groups they fall in from their stored leaf hashes: it never rereads unchanged image bytes.
// Per version the state dir keeps the group list (1/16384 of the image) and a leaf file, one
// 4 KiB page of leaf hashes per group (1/128 of the image's data; sparse where the image is).
// docs/archive.md specifies the algorithm ("blocks-sha256-4k").
//
// Digest strings name their algorithm: "blocks-sha256-4k:<64 hex>" for this one, and
// "sha256:<64 hex>" for the SHA-256 of the whole image that agents before it recorded (and
// version 1 archives carry).

#include <array>
#include <atomic>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "agent/state/template_image.hpp"
#include "common/result.hpp"

namespace wrenn::agent {

// The leaf is the dm-snapshot chunk, so that a flatten's changed chunks are whole leaves and
// nothing unchanged is hashed again. 128 leaves make a group: its leaf hashes fill one 4 KiB
// page of the leaf file, and the group list stays small (40 KiB per GiB).
inline constexpr std::uint64_t kLeafBytes = 4096;
inline constexpr std::uint64_t kLeavesPerGroup = 128;
inline constexpr std::uint64_t kGroupBytes = kLeafBytes * kLeavesPerGroup;
inline constexpr std::uint64_t kLeafPageBytes = kLeavesPerGroup * 32;
inline constexpr std::string_view kBlocksAlgorithm = "blocks-sha256-4k";
inline constexpr std::string_view kWholeAlgorithm = "sha256";

using Hash256 = std::array<std::uint8_t, 32>;

// The group hashes of one image.
struct BlockList {
    std::uint64_t image_bytes = 0;
    std::vector<Hash256> groups;  // group_count(image_bytes) of them

    // The bytes the digest is the SHA-256 of: "WRENNBLK", u64 leaf bytes, u64 leaves per group,
    // u64 image bytes (little-endian), then the group hashes.
    [[nodiscard]] std::string encode() const;
    // The inverse; EINVAL when the bytes are not an encoded list of this algorithm.
    static Result<BlockList> decode(std::string_view bytes);
    // "blocks-sha256-4k:<hex>".
    [[nodiscard]] std::string digest() const;
};

std::uint64_t group_count(std::uint64_t image_bytes);
// The hash of group `group` of an image of `image_bytes` that is all zeros (a hole).
Hash256 hole_group_hash(std::uint64_t image_bytes, std::uint64_t group);

// "blocks-sha256-4k:ab12..." -> ("blocks-sha256-4k", "ab12..."); nullopt unless the
// algorithm is one of the two above and the hex is 64 lowercase digits. A bare 64-hex string
// (a record or cache of an agent before algorithm names) is taken as "sha256".
struct ParsedDigest {
    std::string algorithm;
    std::string hex;
};
std::optional<ParsedDigest> parse_digest(std::string_view digest);
[[nodiscard]] inline bool is_blocks_digest(std::string_view digest) {
    auto parsed = parse_digest(digest);
    return parsed && parsed->algorithm == kBlocksAlgorithm;
}

// Each reads `image` through its descriptor and fails with ESTALE when the file's state (size,
// mtime, ctime) is not image.identity's after the read: a digest belongs to one version only.
//
// The whole list, writing each group's leaf hashes to its page of the (new, empty) file
// leaves_fd (none when it is -1); groups in holes are neither read nor written. With `stop`, a read
// that sees it set ends with ECANCELED.
Result<BlockList> hash_blocks(const std::string& path, const TemplateImage& image, int leaves_fd,
                              const std::atomic<bool>* stop = nullptr);
// `base` (the list of an image of the same size) with the leaves `changed` (sorted, unique)
// hashed again from the image; leaves_fd holds base's leaf file and is updated in place.
Result<BlockList> rehash_blocks(const std::string& path, const TemplateImage& image, BlockList base,
                                int leaves_fd, std::span<const std::uint64_t> changed);
// SHA-256 of the whole image as "sha256:<hex>" (records and archives of earlier agents).
Result<std::string> hash_whole(const std::string& path, const TemplateImage& image);

// The list of an image that arrives in order (an upload), without reading it back: add() its
// leaves in increasing order, each as long as the image has it (4 KiB, the last one maybe
// shorter); a leaf never added is zeros. Each finished group's leaf page goes to leaves_fd (none
// when -1), as hash_blocks writes it; a group with no leaf added is a hole and writes nothing.
class BlockHasher {
  public:
    explicit BlockHasher(int leaves_fd = -1) : leaves_fd_(leaves_fd) {}
    // EINVAL for a leaf not after the last one, or longer than a leaf.
    Result<void> add(std::uint64_t leaf, std::span<const std::byte> data);
    // The list of an image of `image_bytes` (at least what the added leaves cover).
    Result<BlockList> finish(std::uint64_t image_bytes);

  private:
    // Hashes the open group as one of `bytes` bytes and writes its page.
    Result<void> close_group(std::uint64_t bytes);

    int leaves_fd_;
    std::vector<Hash256> groups_;        // the groups closed so far, holes included
    std::optional<std::uint64_t> open_;  // the group whose leaves are being added
    std::array<Hash256, kLeavesPerGroup> page_{};
    std::array<bool, kLeavesPerGroup> added_{};
    std::optional<std::uint64_t> last_leaf_;
    std::uint64_t end_ = 0;  // bytes the added leaves cover
};

// The leaves that chunks of `chunk_bytes` with these indices overlap, sorted, each once.
std::vector<std::uint64_t> leaves_of_chunks(std::span<const std::uint64_t> chunks,
                                            std::uint64_t chunk_bytes, std::uint64_t image_bytes);

}  // namespace wrenn::agent
