#pragma once

// A template's digest computed in the test from its definition (docs/archive.md), not through
// the agent's code, so that a test compares two independent computations.

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/digest.hpp"

namespace wrenn::agent::testing {

// The blocks-sha256-4k digest of an image with these bytes, computed here from the definition
// (docs/archive.md), not through the agent's code: SHA-256 of "WRENNBLK", u64 4096, u64 128,
// u64 size, then for each 512 KiB group the SHA-256 of its 4 KiB leaves' SHA-256s.
inline std::string expected_blocks_digest(const std::string& bytes) {
    constexpr std::size_t kLeaf = 4096;
    constexpr std::size_t kGroup = kLeaf * 128;
    std::string list = "WRENNBLK";
    for (std::uint64_t v :
         {std::uint64_t{kLeaf}, std::uint64_t{128}, std::uint64_t{bytes.size()}}) {
        for (int i = 0; i < 8; ++i) {
            list += static_cast<char>((v >> (8 * i)) & 0xff);
        }
    }
    for (std::size_t group = 0; group < bytes.size(); group += kGroup) {
        Sha256 hashes;
        for (std::size_t at = group; at < std::min(group + kGroup, bytes.size()); at += kLeaf) {
            Sha256 leaf;
            leaf.update(std::string_view(bytes).substr(at, std::min(kLeaf, bytes.size() - at)));
            const auto h = leaf.digest();
            hashes.update(h.data(), h.size());
        }
        const auto g = hashes.digest();
        list.append(reinterpret_cast<const char*>(g.data()), g.size());
    }
    return "blocks-sha256-4k:" + sha256_hex(list);
}

}  // namespace wrenn::agent::testing
