#include "http/connection/session.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/buffer.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/bind_handler.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>
#include <cerrno>
#include <chrono>
#include <exception>
#include <limits>
#include <stdexcept>

namespace wrenn::http::detail {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;

Session::Session(std::shared_ptr<ServerState> state, std::shared_ptr<ListenerInfo> listener,
                 std::string peer, Socket socket)
    : state_(std::move(state)),
      listener_(std::move(listener)),
      id_(state_->next_id.fetch_add(1)),
      peer_(std::move(peer)),
      who_("connection " + std::to_string(id_) + " from " + peer_),
      strand_(socket.get_executor()),
      stream_(std::move(socket)),
      handler_timer_(strand_),
      auth_timer_(strand_) {
    state_->connections.fetch_add(1);
}

Session::~Session() {
    if (!authenticated_) {
        listener_->authenticated(id_);
    }
    state_->remove(id_);
    state_->connections.fetch_sub(1);
    if (!evicted_.load()) {
        listener_->connections.fetch_sub(1);
    }
    spdlog::debug("http: {} closed", who_);
}

void Session::run() {
    state_->add(id_, weak_from_this());
    spdlog::debug("http: {} accepted", who_);
    if (state_->token()) {
        listener_->add_unauthenticated(id_, weak_from_this());
    } else {
        authenticated_ = true;
    }
    net::dispatch(strand_, [self = shared_from_this()] {
        self->arm_auth_timer();
        self->start_read();
    });
}

void Session::arm_auth_timer() {
    if (authenticated_) {
        return;
    }
    auth_timer_.expires_after(opts().auth_timeout);
    // A weak reference: the timer must not keep a closed connection's slot for its length.
    auth_timer_.async_wait([weak = weak_from_this()](beast::error_code ec) {
        auto self = weak.lock();
        if (!ec && self && !self->authenticated_ && self->phase_ != Phase::Closing) {
            spdlog::debug(
                "http: {}: no request with the bearer token within {} s "
                "(--auth-timeout), closing",
                self->who_, self->opts().auth_timeout.count());
            self->close();
        }
    });
}

void Session::note_authenticated() {
    if (authenticated_) {
        return;
    }
    const auto token = state_->token();
    if (!token || !carries_token(*token, parser_->get())) {
        return;
    }
    authenticated_ = true;
    auth_timer_.cancel();
    listener_->authenticated(id_);
}

void Session::drain() {
    net::post(strand_, [self = shared_from_this()] { self->on_drain(); });
}

void Session::close_now() {
    net::post(strand_, [self = shared_from_this()] { self->close(); });
}

void Session::evict() {
    if (evicted_.exchange(true)) {
        return;
    }
    listener_->connections.fetch_sub(1);
    net::post(strand_, [self = shared_from_this()] {
        spdlog::debug(
            "http: {}: {} is full and this connection has not shown the bearer token; "
            "closing it for a new one",
            self->who_, self->listener_->name);
        self->close();
    });
}

void Session::start_read() {
    if (phase_ == Phase::Closing) {
        return;
    }
    phase_ = Phase::Reading;
    if (state_->draining.load() && idle()) {
        close();
        return;
    }
    parser_.emplace();
    // With streamed routes, the limit depends on the request: it is set once its header
    // is read (on_header), before any body byte is parsed.
    if (opts().streamed_body) {
        parser_->body_limit(boost::none);
    } else {
        parser_->body_limit(opts().body_limit);
    }
    header_checked_ = false;
    streamed_request_ = false;
    parser_->header_limit(static_cast<std::uint32_t>(
        std::min<std::size_t>(opts().header_limit, std::numeric_limits<std::uint32_t>::max())));
    // A fresh connection gets read_timeout for its first request: connecting and then
    // sending nothing is a slow client. Between kept-alive requests the client may think
    // for idle_timeout; once a request's first byte arrives it has read_timeout to finish.
    request_started_ = first_request_ || buffer_.size() > 0;
    first_request_ = false;
    continue_handled_ = false;
    stream_.expires_after(request_started_ ? opts().read_timeout : opts().idle_timeout);
    read_some();
}

// No request in progress and nothing buffered or waiting in the kernel.
bool Session::idle() {
    if (buffer_.size() > 0 || (parser_ && parser_->got_some())) {
        return false;
    }
    boost::system::error_code ec;
    return stream_.socket().available(ec) == 0 || ec;
}

void Session::read_some() {
    bhttp::async_read_some(stream_, buffer_, *parser_,
                           beast::bind_front_handler(&Session::on_read, shared_from_this()));
}

void Session::on_read(beast::error_code ec, std::size_t) {
    if (ec) {
        on_read_error(ec);
        return;
    }
    if (!header_checked_ && parser_->is_header_done()) {
        header_checked_ = true;
        if (on_header()) {
            return;
        }
    }
    if (parser_->is_done()) {
        handle_request();
        return;
    }
    if (!request_started_ && (parser_->got_some() || buffer_.size() > 0)) {
        request_started_ = true;
        stream_.expires_after(opts().read_timeout);
    }
    if (!continue_handled_ && parser_->is_header_done() && expects_continue(parser_->get())) {
        continue_handled_ = true;
        answer_expect_continue();
        return;
    }
    read_some();
}

// curl and other clients send "Expect: 100-continue" before a body and wait for it (curl
// for a second) before sending the body (RFC 9110 section 10.1.1). Refuse an unauthorized
// request before its body, else invite the body.
void Session::answer_expect_continue() {
    const auto& header = parser_->get();
    const bool has_body = announces_body(parser_->chunked(), parser_->content_length().value_or(0));
    if (auto refused = refusal(state_->token(), listener_->tcp, header, has_body)) {
        request_version_ = header.version();
        write(refused_response(header, *refused, false), false);
        return;
    }
    static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
    net::async_write(stream_, net::buffer(kContinue.data(), kContinue.size()),
                     [self = shared_from_this()](beast::error_code ec, std::size_t) {
                         if (ec) {
                             self->on_read_error(ec);
                             return;
                         }
                         self->read_some();
                     });
}

void Session::on_read_error(beast::error_code ec) {
    if (phase_ == Phase::Closing || ec == net::error::operation_aborted) {
        return;
    }
    switch (classify_read_failure(ec)) {
        case ReadFailure::ClientClosed:
            spdlog::debug("http: {}: client closed", who_);
            graceful_close();
            return;
        case ReadFailure::TimedOut:
            // basic_stream closed the socket when its timer fired.
            spdlog::warn("http: {}: {} waiting for a request, closing", who_,
                         request_started_ ? "timed out" : "idle");
            phase_ = Phase::Closing;
            return;
        case ReadFailure::BodyTooLarge:
            spdlog::warn("http: {}: body larger than {} bytes", who_, opts().body_limit);
            write_error(
                bhttp::status::payload_too_large, "payload_too_large",
                "request body is larger than " + std::to_string(opts().body_limit) + " bytes");
            return;
        case ReadFailure::HeaderTooLarge:
            spdlog::warn("http: {}: header larger than {} bytes", who_, opts().header_limit);
            write_error(
                bhttp::status::request_header_fields_too_large, "header_too_large",
                "request header is larger than " + std::to_string(opts().header_limit) + " bytes");
            return;
        case ReadFailure::Malformed:
            spdlog::warn("http: {}: bad request: {}", who_, ec.message());
            write_error(bhttp::status::bad_request, "bad_request",
                        "malformed HTTP request: " + ec.message());
            return;
        case ReadFailure::Gone:
            spdlog::debug("http: {}: read: {}", who_, ec.message());
            close();
            return;
    }
}

// The header is whole and no body byte is parsed yet (beast's put stops after the header):
// a streamed route takes the request over; any other gets the JSON body limit. True when
// the request was taken over.
bool Session::on_header() {
    if (auto refused = framing_refusal(parser_->get(), parser_->chunked())) {
        request_version_ = parser_->get().version();
        write(refused_response(parser_->get(), *refused, false), false);
        return true;
    }
    note_authenticated();
    if (opts().streamed_body) {
        if (auto streamed = opts().streamed_body(parser_->get())) {
            start_streamed(std::move(*streamed));
            return true;
        }
        if (parser_->content_length().value_or(0) > opts().body_limit) {
            on_read_error(bhttp::error::body_limit);
            return true;
        }
        parser_->body_limit(opts().body_limit);
    }
    return false;
}

Respond Session::make_respond(std::uint64_t seq) {
    return [weak = weak_from_this(), strand = strand_, seq](Reply reply) {
        net::post(strand, [weak, seq, reply = std::move(reply)]() mutable {
            if (auto self = weak.lock()) {
                self->on_response(seq, std::move(reply));
            }
        });
    };
}

void Session::arm_handler_timer(std::uint64_t seq) {
    handler_timer_.expires_after(opts().handler_timeout);
    handler_timer_.async_wait([self = shared_from_this(), seq](beast::error_code ec) {
        if (!ec && self->phase_ == Phase::Handling && self->seq_ == seq) {
            spdlog::warn("http: {}: no response within {} s, closing", self->who_,
                         self->opts().handler_timeout.count());
            self->close();
        }
    });
}

// A streamed request: the transport checks, then the handler gets the header and the
// reading end of a body pipe, while a RequestBodyStream reads the body into the other end.
void Session::start_streamed(StreamedBody streamed) {
    phase_ = Phase::Handling;
    const auto& header = parser_->get();
    request_version_ = header.version();
    request_keep_alive_ = header.keep_alive();
    request_is_head_ = false;
    streamed_request_ = true;
    const std::uint64_t seq = ++seq_;
    const bool has_body = announces_body(parser_->chunked(), parser_->content_length().value_or(0));
    if (auto refused = refusal(state_->token(), listener_->tcp, header, has_body, &streamed)) {
        write(refused_response(header, *refused, false), false);
        return;
    }
    if (parser_->content_length().value_or(0) > streamed.limit) {
        spdlog::warn("http: {}: {} {}: body of {} bytes, over {}", who_,
                     printable(header.method_string()), printable(header.target()),
                     *parser_->content_length(), streamed.limit);
        write_error(bhttp::status::payload_too_large, "payload_too_large",
                    "request body is larger than " + std::to_string(streamed.limit) + " bytes");
        return;
    }
    auto pipe = make_body_pipe();
    if (!pipe) {
        spdlog::error("http: {}: {}", who_, pipe.error().message());
        write(error_response(request_version_, bhttp::status::internal_server_error,
                             "internal_error", pipe.error().message(), false),
              false);
        return;
    }
    const bool wants_continue = !continue_handled_ && expects_continue(header);
    Request req(header);
    body_.emplace(stream_, buffer_, piece_, who_, std::move(pipe->writer), std::move(*parser_),
                  streamed.limit);
    parser_.reset();
    try {
        opts().stream_handler(std::move(req), std::move(pipe->reader), make_respond(seq));
    } catch (const std::exception& e) {
        spdlog::warn("http: {}: handler threw: {}", who_, e.what());
        body_->abort(Error("read body", ECANCELED, "the handler failed"));
        write(error_response(request_version_, bhttp::status::internal_server_error,
                             "internal_error", "internal error", false),
              false);
        return;
    }
    if (phase_ != Phase::Handling || !body_->reading()) {
        return;  // answered at once
    }
    if (wants_continue) {
        continue_handled_ = true;
    }
    body_->start(wants_continue, opts().read_timeout,
                 [self = shared_from_this()](RequestBodyStream::End end, beast::error_code ec) {
                     self->on_body_end(end, ec);
                 });
}

void Session::on_body_end(RequestBodyStream::End end, beast::error_code ec) {
    using End = RequestBodyStream::End;
    switch (end) {
        case End::Complete:
            // The handler now has handler_timeout to answer.
            arm_handler_timer(seq_);
            return;
        case End::HandlerStopped:
            arm_handler_timer(seq_);
            after_body_op();
            return;
        case End::GivenUp:
            after_body_op();
            return;
        case End::TooLarge:
            write_error(bhttp::status::payload_too_large, "payload_too_large",
                        "request body is larger than " + std::to_string(body_->limit()) + " bytes");
            return;
        case End::Malformed:
            write_error(bhttp::status::bad_request, "bad_request",
                        "malformed HTTP request: " + ec.message());
            return;
        case End::Failed:
            close();
            return;
    }
}

// The body is given up (an early response, or the handler stopped reading): once the
// read or pipe write in flight has finished, the response that waited for it goes out.
void Session::after_body_op() {
    if (phase_ == Phase::Closing || (body_ && body_->op_pending()) || !pending_reply_) {
        return;
    }
    Reply reply = std::move(*pending_reply_);
    pending_reply_.reset();
    deliver(std::move(reply));
}

void Session::handle_request() {
    phase_ = Phase::Handling;
    Request req = parser_->release();
    parser_.reset();
    request_version_ = req.version();
    request_keep_alive_ = req.keep_alive();
    request_is_head_ = req.method() == bhttp::verb::head;
    const std::uint64_t seq = ++seq_;

    if (auto refused =
            refusal(state_->token(), listener_->tcp, req, !req.body().empty() || req.chunked())) {
        on_response(seq, refused_response(req, *refused, request_keep_alive_));
        return;
    }

    // The handler may keep respond forever and never call it; then this timer is what ends
    // the session. respond holds only a weak reference, so it keeps nothing alive.
    arm_handler_timer(seq);
    Respond respond = make_respond(seq);
    try {
        state_->handler(std::move(req), std::move(respond));
    } catch (const std::exception& e) {
        spdlog::warn("http: {}: handler threw: {}", who_, e.what());
        on_response(seq, error_response(request_version_, bhttp::status::internal_server_error,
                                        "internal_error", "internal error", false));
    }
}

Response Session::refused_response(const RequestHeader& req, const Refusal& refused,
                                   bool keep_alive) {
    spdlog::warn("http: {}: {} {}: {}", who_, printable(req.method_string()),
                 printable(req.target()), refused.message);
    return refusal_response(req, refused, keep_alive);
}

void Session::on_response(std::uint64_t seq, Reply reply) {
    if (phase_ != Phase::Handling || seq != seq_ || pending_reply_) {
        spdlog::debug("http: {}: dropping a late or repeated response", who_);
        return;
    }
    handler_timer_.cancel();
    if (body_ && body_->reading()) {
        // Answered before the end of the body: stop reading it; the connection closes
        // after the response (an unread body cannot be skipped to the next request).
        spdlog::debug("http: {}: answered before the end of the body", who_);
        body_->give_up(Error("read body", ECANCELED, "answered before the end of the body"));
    }
    if (body_ && body_->op_pending()) {
        pending_reply_.emplace(std::move(reply));
        boost::system::error_code ignored;
        stream_.socket().cancel(ignored);
        return;
    }
    deliver(std::move(reply));
}

void Session::deliver(Reply reply) {
    const bool whole_body = !streamed_request_ || (body_ && body_->complete());
    const bool keep = request_keep_alive_ && whole_body && !draining_ && !state_->draining.load();
    if (reply.streamed()) {
        send_stream(std::move(reply.stream()), keep);
        return;
    }
    Response& res = reply.response();
    write(std::move(res), keep && res.keep_alive());
}

void Session::send_stream(StreamedResponse streamed, bool keep_alive) {
    phase_ = Phase::Writing;
    response_stream_.emplace(stream_, piece_, who_);
    response_stream_->start(std::move(streamed), request_version_, keep_alive, opts().read_timeout,
                            [self = shared_from_this()](bool whole, bool keep) {
                                if (whole) {
                                    self->on_write({}, keep);
                                } else {
                                    self->close();
                                }
                            });
}

void Session::write_error(bhttp::status status, std::string_view code, const std::string& message) {
    request_version_ = parser_ && parser_->is_header_done() ? parser_->get().version() : 11;
    write(error_response(11, status, code, message, false), false);
}

void Session::write(Response res, bool keep_alive) {
    phase_ = Phase::Writing;
    res.version(request_version_);
    res.keep_alive(keep_alive);
    try {
        res.prepare_payload();
    } catch (const std::invalid_argument&) {
        // 1xx, 204 and 304 responses must not carry a body (RFC 9110 section 6.4.1).
        res.body().clear();
        res.prepare_payload();
    }
    if (request_is_head_) {
        // Keep the Content-Length of the body a GET would get, but send no body.
        res.body().clear();
    }
    response_.emplace(std::move(res));
    stream_.expires_after(opts().read_timeout);
    bhttp::async_write(stream_, *response_,
                       [self = shared_from_this(), keep_alive](beast::error_code ec, std::size_t) {
                           self->on_write(ec, keep_alive);
                       });
}

void Session::on_write(beast::error_code ec, bool keep_alive) {
    response_.reset();
    response_stream_.reset();
    body_.reset();
    request_is_head_ = false;
    if (ec) {
        if (ec != net::error::operation_aborted) {
            spdlog::debug("http: {}: write: {}", who_, ec.message());
        }
        close();
        return;
    }
    if (!keep_alive) {
        graceful_close();
        return;
    }
    start_read();
}

void Session::on_drain() {
    draining_ = true;
    if (phase_ == Phase::Reading && idle()) {
        spdlog::debug("http: {}: closing idle connection", who_);
        close();
    }
}

// Sends FIN, then reads and discards what the client still sends (say, the rest of a body
// we refused) for a bounded time: closing with unread data makes the kernel send RST, and
// the client could lose the response we just wrote. (Apache's lingering close, 2 s.)
void Session::graceful_close() {
    phase_ = Phase::Closing;
    beast::error_code ec;
    stream_.socket().shutdown(Socket::shutdown_send, ec);
    if (ec) {
        close();
        return;
    }
    stream_.expires_after(
        std::min<std::chrono::seconds>(opts().read_timeout, std::chrono::seconds(2)));
    linger();
}

void Session::linger() {
    stream_.async_read_some(net::buffer(linger_buffer_),
                            [self = shared_from_this()](beast::error_code ec, std::size_t n) {
                                self->lingered_ += n;
                                if (ec || self->lingered_ > kLingerLimit) {
                                    self->close();
                                    return;
                                }
                                self->linger();
                            });
}

void Session::close() {
    phase_ = Phase::Closing;
    handler_timer_.cancel();
    auth_timer_.cancel();
    if (body_) {
        body_->abort(Error("read body", ECONNRESET, "the connection closed"));
        body_->close_pipe();
    }
    if (response_stream_) {
        response_stream_->close();
    }
    stream_.close();
}

}  // namespace wrenn::http::detail
