#pragma once

// A template's digest computed in the test from its definition (docs/archive.md), not through
// the agent's code, so that a test compares two independent computations.

#include <cstdint>
#include <string>
#include <string_view>

#include "common/digest.hpp"

namespace wrenn::agent::testing {

// The blocks-sha256-64k digest of an image with these bytes, computed here from the definition
// (docs/archive.md), not through the agent's code.
inline std::string expected_blocks_digest(const std::string& bytes) {
    constexpr std::size_t kBlock = 64 << 10;
    std::string list = "WRENNBLK";
    for (std::uint64_t v : {std::uint64_t{kBlock}, std::uint64_t{bytes.size()}}) {
        for (int i = 0; i < 8; ++i) {
            list += static_cast<char>((v >> (8 * i)) & 0xff);
        }
    }
    for (std::size_t at = 0; at < bytes.size(); at += kBlock) {
        Sha256 block;
        block.update(std::string_view(bytes).substr(at, kBlock));
        const auto h = block.digest();
        list.append(reinterpret_cast<const char*>(h.data()), h.size());
    }
    return "blocks-sha256-64k:" + sha256_hex(list);
}


}  // namespace wrenn::agent::testing
