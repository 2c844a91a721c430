#pragma once

// Little-endian fields for the archive's writer and reader (internal to archive/).

#include <cstddef>
#include <cstdint>

namespace wrenn::archive::detail {

inline void put_le(std::byte* p, std::uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) {
        p[i] = static_cast<std::byte>((v >> (8 * i)) & 0xff);
    }
}

inline std::uint64_t get_le(const std::byte* p, int bytes) {
    std::uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; --i) {
        v = (v << 8) | std::to_integer<std::uint64_t>(p[i]);
    }
    return v;
}

}  // namespace wrenn::archive::detail
