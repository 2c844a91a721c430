#include "http/stream/request_body_stream.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/buffer.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/read.hpp>
#include <cerrno>
#include <string_view>

#include "common/unique_fd.hpp"
#include "http/policy/request_policy.hpp"

namespace wrenn::http::detail {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using unix_socket = boost::asio::local::stream_protocol;

RequestBodyStream::RequestBodyStream(ConnectionStream& stream, beast::flat_buffer& buffer,
                                     std::vector<char>& piece, std::string who, BodyWriter writer,
                                     bhttp::request_parser<bhttp::string_body>&& parser,
                                     std::uint64_t limit)
    : stream_(stream),
      buffer_(buffer),
      piece_(piece),
      who_(std::move(who)),
      status_(writer.status()),
      pipe_(stream.get_executor()),
      parser_(std::move(parser)),
      limit_(limit) {
    piece_.resize(kPieceBytes);
    // Beast reads at most the buffer's free capacity (and at least 512 bytes) per read_some.
    // After a header the buffer holds about the header's size, so without room made here a
    // body came in pieces of that size: 512-byte reads, one pipe write each, 23 MB/s for an
    // upload on a machine whose disk takes 600 MB/s.
    buffer_.reserve(kPieceBytes);
    UniqueFd fd = writer.release();
    boost::system::error_code ec;
    // Should the socket not take it, the descriptor closes here and the first write fails
    // like a handler that stopped reading.
    pipe_.assign(unix_socket(), fd.get(), ec);
    if (!ec) {
        fd.release();
    }
    parser_.body_limit(limit_);
}

void RequestBodyStream::start(bool send_continue, std::chrono::seconds timeout, Ended ended) {
    timeout_ = timeout;
    if (!send_continue) {
        pump(std::move(ended));
        return;
    }
    static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
    op_pending_ = true;
    stream_.expires_after(timeout_);
    net::async_write(stream_, net::buffer(kContinue.data(), kContinue.size()),
                     [this, ended = std::move(ended)](beast::error_code ec, std::size_t) mutable {
                         op_pending_ = false;
                         if (state_ != State::Reading) {
                             ended(End::GivenUp, {});
                         } else if (ec) {
                             on_read(ec, std::move(ended));
                         } else {
                             pump(std::move(ended));
                         }
                     });
}

void RequestBodyStream::abort(Error why) {
    if (state_ != State::Reading) {
        return;
    }
    state_ = State::Broken;
    status_->broken(std::move(why));
    close_pipe();
}

void RequestBodyStream::give_up(Error why) {
    if (state_ != State::Reading) {
        return;
    }
    abort(std::move(why));
    state_ = State::Abandoned;
}

void RequestBodyStream::close_pipe() {
    boost::system::error_code ignored;
    pipe_.close(ignored);
}

void RequestBodyStream::pump(Ended ended) {
    if (parser_.is_done()) {
        status_->complete();
        close_pipe();
        state_ = State::Complete;
        ended(End::Complete, {});
        return;
    }
    auto& body = parser_.get().body();
    body.data = piece_.data();
    body.size = piece_.size();
    body.more = true;
    op_pending_ = true;
    stream_.expires_after(timeout_);
    bhttp::async_read_some(
        stream_, buffer_, parser_,
        [this, ended = std::move(ended)](beast::error_code ec, std::size_t) mutable {
            on_read(ec, std::move(ended));
        });
}

void RequestBodyStream::on_read(beast::error_code ec, Ended ended) {
    op_pending_ = false;
    if (state_ != State::Reading) {
        ended(End::GivenUp, {});
        return;
    }
    if (ec == bhttp::error::need_buffer) {
        ec = {};
    }
    const std::size_t got = piece_.size() - parser_.get().body().size;
    if (ec) {
        const std::string after = " after " + std::to_string(bytes_ + got) + " bytes";
        // Any other HTTP error (the header's failures cannot happen here) is a malformed body.
        switch (classify_read_failure(ec)) {
            case ReadFailure::BodyTooLarge:
                spdlog::warn("http: {}: body larger than {} bytes", who_, limit_);
                abort(Error("read body", EFBIG,
                            "larger than the limit of " + std::to_string(limit_) + " bytes"));
                ended(End::TooLarge, ec);
                return;
            case ReadFailure::TimedOut:
                spdlog::warn("http: {}: body timed out{}", who_, after);
                abort(Error("read body", ETIMEDOUT,
                            "the client sent nothing for " + std::to_string(timeout_.count()) +
                                " s" + after));
                ended(End::Failed, ec);
                return;
            case ReadFailure::ClientClosed:
            case ReadFailure::HeaderTooLarge:
            case ReadFailure::Malformed:
                spdlog::warn("http: {}: bad body: {}", who_, ec.message());
                abort(Error("read body", EBADMSG, "malformed body: " + ec.message() + after));
                ended(End::Malformed, ec);
                return;
            case ReadFailure::Gone:
                spdlog::warn("http: {}: the client went away{}: {}", who_, after, ec.message());
                abort(Error("read body", ECONNRESET, "the client closed the connection" + after));
                ended(End::Failed, ec);
                return;
        }
    }
    bytes_ += got;
    if (got == 0) {
        pump(std::move(ended));
        return;
    }
    op_pending_ = true;
    net::async_write(pipe_, net::buffer(piece_.data(), got),
                     [this, ended = std::move(ended)](beast::error_code wec, std::size_t) mutable {
                         on_pipe_write(wec, std::move(ended));
                     });
}

void RequestBodyStream::on_pipe_write(beast::error_code ec, Ended ended) {
    op_pending_ = false;
    if (state_ != State::Reading) {
        ended(End::GivenUp, {});
        return;
    }
    if (ec) {
        // The handler closed its end: it has read enough and answers (or already has).
        spdlog::debug("http: {}: the handler stopped reading the body: {}", who_, ec.message());
        state_ = State::Abandoned;
        close_pipe();
        ended(End::HandlerStopped, {});
        return;
    }
    pump(std::move(ended));
}

}  // namespace wrenn::http::detail
