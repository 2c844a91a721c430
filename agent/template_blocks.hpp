#pragma once

// A template's digest that updates in O(changed) and is computed in O(allocated).
//
// The image is cut into blocks of kDigestBlockBytes (the last one may be shorter); each block
// has its SHA-256, and the digest is the SHA-256 of the encoded list of those hashes (a fixed
// header naming the block size and the image size, then the hashes in order). A block that lies
// in a hole hashes as zeros without being read (SEEK_DATA/SEEK_HOLE), and a flatten rehashes
// only the blocks its changed chunks touch. The encoded list is what the state dir keeps per
// template version, so a stored list is checked by hashing it again. docs/archive.md specifies
// the algorithm ("blocks-sha256-64k").
//
// Digest strings name their algorithm: "blocks-sha256-64k:<64 hex>" for this one, and
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

#include "agent/template_image.hpp"
#include "common/result.hpp"

namespace wrenn::agent {

// 64 KiB: flatten rehashes every block one of its 4 KiB chunks touches, so the block is small
// enough that scattered changes do not reread the image (1% of chunks at random touch 15% of
// 64 KiB blocks, 92% of 1 MiB ones), and large enough that the stored list is 1/2048 of the
// image (10 MiB for 20 GiB) and per-block overhead stays below the read's.
inline constexpr std::uint64_t kDigestBlockBytes = 64 << 10;
inline constexpr std::string_view kBlocksAlgorithm = "blocks-sha256-64k";
inline constexpr std::string_view kWholeAlgorithm = "sha256";

using Hash256 = std::array<std::uint8_t, 32>;

// The block hashes of one image.
struct BlockList {
    std::uint64_t image_bytes = 0;
    std::vector<Hash256> hashes;  // block_count(image_bytes) of them

    // The bytes the digest is the SHA-256 of: "WRENNBLK", u64 block bytes, u64 image bytes
    // (little-endian), then the hashes.
    [[nodiscard]] std::string encode() const;
    // The inverse; EINVAL when the bytes are not an encoded list of 64 KiB blocks.
    static Result<BlockList> decode(std::string_view bytes);
    // "blocks-sha256-64k:<hex>".
    [[nodiscard]] std::string digest() const;
};

std::uint64_t block_count(std::uint64_t image_bytes);
// SHA-256 of `bytes` zero bytes (a block in a hole).
Hash256 zero_block_hash(std::uint64_t bytes);

// "blocks-sha256-64k:ab12..." -> ("blocks-sha256-64k", "ab12..."); nullopt unless the
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
// The whole list; blocks in holes are not read. With `stop`, a read that sees it set ends
// with ECANCELED.
Result<BlockList> hash_blocks(const std::string& path, const TemplateImage& image,
                              const std::atomic<bool>* stop = nullptr);
// `base` (a list of an image of the same size) with `blocks` hashed again from the image.
Result<BlockList> rehash_blocks(const std::string& path, const TemplateImage& image,
                                BlockList base, std::span<const std::uint64_t> blocks);
// SHA-256 of the whole image as "sha256:<hex>" (records and archives of earlier agents).
Result<std::string> hash_whole(const std::string& path, const TemplateImage& image);

// The blocks that chunks of `chunk_bytes` with these indices overlap, sorted, each once.
std::vector<std::uint64_t> blocks_of_chunks(std::span<const std::uint64_t> chunks,
                                            std::uint64_t chunk_bytes, std::uint64_t image_bytes);

}  // namespace wrenn::agent
