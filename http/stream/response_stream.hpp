#pragma once

#include <boost/asio/local/stream_protocol.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/serializer.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "http/core/body_pipe.hpp"
#include "http/core/message.hpp"
#include "http/stream/connection_stream.hpp"

namespace wrenn::http::detail {

// Sends one StreamedResponse on a connection: the header, then each piece its worker writes
// into the pipe as a chunk (HTTP/1.0: as it comes, and the connection closes after it), then
// the last chunk once the worker said the body is complete. A body cut short (the worker
// failed, or went away) ends without the last chunk, so that the client sees a broken
// transfer. Its operations run on the connection's strand, as the session's do.
class ResponseStream {
  public:
    // Called once at the end, unless close() came first: whole when the response went out
    // whole (keep_alive: whether the connection may carry the next request); else the
    // response was cut short, the reason is logged, and the connection must close. It holds
    // the session, and so this object, alive while an operation is in flight.
    using Sent = std::function<void(bool whole, bool keep_alive)>;

    // stream and piece (the session's buffer for a piece of a body) outlive this object;
    // who names the connection in log lines.
    ResponseStream(ConnectionStream& stream, std::vector<char>& piece, std::string who)
        : stream_(stream), piece_(piece), who_(std::move(who)) {}
    ResponseStream(const ResponseStream&) = delete;
    ResponseStream& operator=(const ResponseStream&) = delete;

    // Sends `response` in the request's HTTP version; each write (the header, a piece) must
    // finish within timeout, however long the worker takes between pieces.
    void start(StreamedResponse response, unsigned version, bool keep_alive,
               std::chrono::seconds timeout, Sent sent);
    // Closes the worker's pipe (its writes fail with EPIPE and it stops); a read of the pipe
    // in flight then ends without calling sent.
    void close();

  private:
    void on_written(boost::beast::error_code ec, Sent sent);
    void on_piece(boost::beast::error_code ec, std::size_t n, Sent sent);

    ConnectionStream& stream_;
    std::vector<char>& piece_;
    const std::string who_;
    std::chrono::seconds timeout_{0};
    std::optional<boost::beast::http::response<boost::beast::http::empty_body>> header_;
    std::optional<boost::beast::http::response_serializer<boost::beast::http::empty_body>>
        serializer_;
    std::optional<boost::asio::local::stream_protocol::socket> pipe_;
    std::shared_ptr<BodyStatus> status_;
    std::uint64_t bytes_ = 0;
    bool chunked_ = true;
    bool keep_alive_ = false;
    bool closed_ = false;
};

}  // namespace wrenn::http::detail
