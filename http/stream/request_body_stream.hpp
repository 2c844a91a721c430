#pragma once

#include <boost/asio/local/stream_protocol.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/result.hpp"
#include "http/core/body_pipe.hpp"
#include "http/stream/connection_stream.hpp"

namespace wrenn::http::detail {

// Reads a streamed request's body from the connection into the writing end of a BodyPipe, one
// piece at a time, while the handler reads the other end on a worker: a piece is read only
// once the one before is in the pipe, so the kernel's socket buffers are the backpressure.
// The body ends whole, or the handler stops reading it, or the session gives it up (it
// answered early), or the client fails it (too large, malformed, timed out, gone); the
// handler's reads then fail with the reason. Its operations run on the connection's strand.
class RequestBodyStream {
  public:
    // How reading ended, for the session to go on from.
    enum class End {
        Complete,        // read whole; the handler has it all
        HandlerStopped,  // the handler closed its end: it has read enough
        GivenUp,         // give_up() or abort() came while a read or write was in flight
        TooLarge,        // over the limit: answer 413
        Malformed,       // not a valid HTTP body: answer 400
        Failed,          // timed out, or the client went away: close
    };
    // Called once, unless the connection closed first; ec is the read's error for Malformed.
    // It holds the session, and so this object, alive while an operation is in flight.
    using Ended = std::function<void(End, boost::beast::error_code ec)>;

    // stream, buffer (the bytes read past the header) and piece (the session's buffer for a
    // piece of a body) outlive this object; who names the connection in log lines. Takes over
    // the parser that read the request's header, and the pipe's writing end.
    RequestBodyStream(ConnectionStream& stream, boost::beast::flat_buffer& buffer,
                      std::vector<char>& piece, std::string who, BodyWriter writer,
                      boost::beast::http::request_parser<boost::beast::http::string_body>&& parser,
                      std::uint64_t limit);
    RequestBodyStream(const RequestBodyStream&) = delete;
    RequestBodyStream& operator=(const RequestBodyStream&) = delete;

    // Reads the body, after "100 Continue" when the client waits for it; each read of a piece
    // must make progress within timeout.
    void start(bool send_continue, std::chrono::seconds timeout, Ended ended);

    // Still reading: neither whole nor ended.
    [[nodiscard]] bool reading() const { return state_ == State::Reading; }
    [[nodiscard]] bool complete() const { return state_ == State::Complete; }
    // A read, pipe write or 100 Continue is in flight: what gives the body up must wait for it.
    [[nodiscard]] bool op_pending() const { return op_pending_; }
    [[nodiscard]] std::uint64_t limit() const { return limit_; }

    // While reading: the handler's reads fail with `why`, and the pipe closes.
    void abort(Error why);
    // While reading: abort(why), for a response given before the end of the body.
    void give_up(Error why);
    // Closes the pipe's writing end (the handler then sees the end of the body, or `why`).
    void close_pipe();

  private:
    enum class State { Reading, Complete, Abandoned, Broken };

    void pump(Ended ended);
    void on_read(boost::beast::error_code ec, Ended ended);
    void on_pipe_write(boost::beast::error_code ec, Ended ended);

    ConnectionStream& stream_;
    boost::beast::flat_buffer& buffer_;
    std::vector<char>& piece_;
    const std::string who_;
    std::shared_ptr<BodyStatus> status_;
    boost::asio::local::stream_protocol::socket pipe_;
    boost::beast::http::request_parser<boost::beast::http::buffer_body> parser_;
    const std::uint64_t limit_;
    std::uint64_t bytes_ = 0;
    std::chrono::seconds timeout_{0};
    State state_ = State::Reading;
    bool op_pending_ = false;
};

}  // namespace wrenn::http::detail
