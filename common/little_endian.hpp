#pragma once

// Little-endian fields of the formats the agent reads and writes (dm's exception store, the
// sandbox archive), over Boost.Endian.

#include <boost/endian/conversion.hpp>
#include <cstddef>
#include <cstdint>

namespace wrenn {

template <class T>
T load_le(const std::byte* p) {
    return boost::endian::endian_load<T, sizeof(T), boost::endian::order::little>(
        reinterpret_cast<const unsigned char*>(p));
}

template <class T>
void store_le(std::byte* p, T value) {
    boost::endian::endian_store<T, sizeof(T), boost::endian::order::little>(
        reinterpret_cast<unsigned char*>(p), value);
}

}  // namespace wrenn
