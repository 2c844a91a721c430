#pragma once

#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/beast/core/basic_stream.hpp>
#include <cstddef>

namespace wrenn::http::detail {

// One accepted connection, TCP or unix alike (Asio's generic stream protocol takes either
// socket), with Beast's timeouts on every read and write.
using ConnectionStream = boost::beast::basic_stream<boost::asio::generic::stream_protocol>;

// One piece of a streamed body, either way: what a read from the client or from a worker's
// pipe may hold at a time.
inline constexpr std::size_t kPieceBytes = 64 * 1024;

}  // namespace wrenn::http::detail
