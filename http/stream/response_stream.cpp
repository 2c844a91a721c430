#include "http/stream/response_stream.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/buffer.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/http/chunk_encode.hpp>
#include <boost/beast/http/field.hpp>
#include <boost/beast/http/write.hpp>

#include "common/unique_fd.hpp"

namespace wrenn::http::detail {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using unix_socket = boost::asio::local::stream_protocol;

void ResponseStream::start(StreamedResponse response, unsigned version, bool keep_alive,
                           std::chrono::seconds timeout, Sent sent) {
    timeout_ = timeout;
    status_ = response.body.status();
    UniqueFd fd = response.body.release();
    pipe_.emplace(stream_.get_executor());
    boost::system::error_code ec;
    pipe_->assign(unix_socket(), fd.get(), ec);
    if (ec) {
        spdlog::error("http: {}: streamed response: {}", who_, ec.message());
        sent(false, false);
        return;
    }
    fd.release();
    piece_.resize(kPieceBytes);
    chunked_ = version >= 11;
    keep_alive_ = keep_alive && chunked_;
    bytes_ = 0;
    header_.emplace(std::move(response.header));
    header_->version(version);
    header_->keep_alive(keep_alive_);
    header_->erase(bhttp::field::content_length);
    if (chunked_) {
        header_->chunked(true);
    }
    serializer_.emplace(*header_);
    stream_.expires_after(timeout_);
    bhttp::async_write_header(
        stream_, *serializer_,
        [this, sent = std::move(sent)](beast::error_code wec, std::size_t) mutable {
            on_written(wec, std::move(sent));
        });
}

void ResponseStream::close() {
    closed_ = true;
    if (pipe_) {
        // The worker writing the body gets EPIPE and stops.
        boost::system::error_code ignored;
        pipe_->close(ignored);
    }
}

void ResponseStream::on_written(beast::error_code ec, Sent sent) {
    if (ec) {
        if (ec != net::error::operation_aborted) {
            spdlog::warn("http: {}: streamed response cut after {} bytes: write: {}", who_, bytes_,
                         ec.message());
        }
        sent(false, false);
        return;
    }
    pipe_->async_read_some(net::buffer(piece_), [this, sent = std::move(sent)](
                                                    beast::error_code rec, std::size_t n) mutable {
        on_piece(rec, n, std::move(sent));
    });
}

void ResponseStream::on_piece(beast::error_code ec, std::size_t n, Sent sent) {
    if (closed_) {
        return;
    }
    if (n > 0) {
        bytes_ += n;
        stream_.expires_after(timeout_);
        auto done = [this, sent = std::move(sent)](beast::error_code wec, std::size_t) mutable {
            on_written(wec, std::move(sent));
        };
        if (chunked_) {
            net::async_write(stream_, bhttp::make_chunk(net::buffer(piece_.data(), n)),
                             std::move(done));
        } else {
            net::async_write(stream_, net::buffer(piece_.data(), n), std::move(done));
        }
        return;
    }
    auto ended = ec == net::error::eof ? status_->outcome()
                                       : Result<void>(Error("read body", ec.value(), ec.message()));
    if (!ended) {
        // No last chunk: the client sees a broken transfer, not a short body.
        spdlog::error("http: {}: streamed response aborted after {} bytes: {}", who_, bytes_,
                      ended.error().message());
        sent(false, false);
        return;
    }
    pipe_.reset();
    if (!chunked_) {
        sent(true, false);
        return;
    }
    net::async_write(stream_, bhttp::make_chunk_last(),
                     [this, sent = std::move(sent)](beast::error_code wec, std::size_t) {
                         if (wec) {
                             if (wec != net::error::operation_aborted) {
                                 spdlog::debug("http: {}: write: {}", who_, wec.message());
                             }
                             sent(false, false);
                             return;
                         }
                         sent(true, keep_alive_);
                     });
}

}  // namespace wrenn::http::detail
