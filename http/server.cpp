#include "http/server.hpp"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/basic_stream.hpp>
#include <boost/beast/core/bind_handler.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/chunk_encode.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>
#include <cerrno>
#include <cstdint>
#include <limits>
#include <mutex>
#include <unordered_map>

#include "common/unique_fd.hpp"
#include "http/request_policy.hpp"
#include "http/socket_dir.hpp"

namespace wrenn::http {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = boost::asio::ip::tcp;
using unix_socket = boost::asio::local::stream_protocol;

// ---------------------------------------------------------------------------------------------
// Shared state, sessions and listeners.

namespace detail {

// A live connection as the server sees it; both calls may come from any thread.
class SessionBase {
  public:
    virtual ~SessionBase() = default;
    // Finish the current request, if any, then close.
    virtual void drain() = 0;
    // Close now, dropping any response still pending.
    virtual void close_now() = 0;
};

// What the server and its sessions share. Sessions keep it alive, so it outlives the Server
// object when connections are still closing.
struct ServerState {
    ServerState(ServerOptions o, Handler h) : opts(std::move(o)), handler(std::move(h)) {}

    const ServerOptions opts;
    const Handler handler;
    std::atomic<std::size_t> connections{0};
    std::atomic<std::uint64_t> refused{0};
    std::atomic<bool> draining{false};
    std::atomic<std::uint64_t> next_id{1};

    std::mutex mutex;
    std::unordered_map<std::uint64_t, std::weak_ptr<SessionBase>> sessions;

    void add(std::uint64_t id, std::weak_ptr<SessionBase> session) {
        std::lock_guard lock(mutex);
        sessions.emplace(id, std::move(session));
    }
    void remove(std::uint64_t id) {
        std::lock_guard lock(mutex);
        sessions.erase(id);
    }
    std::vector<std::shared_ptr<SessionBase>> live() {
        std::vector<std::shared_ptr<SessionBase>> out;
        std::lock_guard lock(mutex);
        for (auto& [id, weak] : sessions) {
            if (auto session = weak.lock()) {
                out.push_back(std::move(session));
            }
        }
        return out;
    }
};

// What the sessions of one listener share with it.
struct ListenerInfo {
    std::string name;  // "127.0.0.1:7070", "unix:/run/wrenn/agent.sock"
    // Set for a TCP listener: the address a Host header may name besides loopback.
    std::optional<ListenAddress> tcp;
    std::atomic<std::size_t> connections{0};
};

// One listening socket and its accept loop.
class ListenerBase {
  public:
    virtual ~ListenerBase() = default;
    virtual void start() = 0;
    // Idempotent; after it returns the socket is closed and new connections are refused.
    virtual void close() = 0;
};

namespace {

std::string describe_peer(const tcp::socket& socket, const ListenerInfo&) {
    boost::system::error_code ec;
    const auto ep = socket.remote_endpoint(ec);
    if (ec) {
        return "tcp:?";
    }
    return ep.address().is_v6() ? "[" + ep.address().to_string() + "]:" + std::to_string(ep.port())
                                : ep.address().to_string() + ":" + std::to_string(ep.port());
}

// The peer of a unix socket has no address; the listener's path says where it came in.
std::string describe_peer(const unix_socket::socket&, const ListenerInfo& listener) {
    return listener.name;
}

// One HTTP/1.1 connection: reads requests one at a time with limits and timeouts, checks the
// token, hands each request to the handler and writes its response, then reads the next
// (keep-alive) or closes gracefully. All its state is touched only on its strand; the strand
// is the executor of the socket it was accepted into.
template <class Protocol>
class Session final : public SessionBase, public std::enable_shared_from_this<Session<Protocol>> {
  public:
    using Socket = typename Protocol::socket;
    using Stream = beast::basic_stream<Protocol>;

    // The listener has counted this connection in listener->connections already.
    Session(std::shared_ptr<ServerState> state, std::shared_ptr<ListenerInfo> listener,
            Socket socket)
        : state_(std::move(state)),
          listener_(std::move(listener)),
          id_(state_->next_id.fetch_add(1)),
          peer_(describe_peer(socket, *listener_)),
          strand_(socket.get_executor()),
          stream_(std::move(socket)),
          handler_timer_(strand_) {
        state_->connections.fetch_add(1);
    }

    ~Session() override {
        state_->remove(id_);
        state_->connections.fetch_sub(1);
        listener_->connections.fetch_sub(1);
        spdlog::debug("http: connection {} from {} closed", id_, peer_);
    }

    void run() {
        state_->add(id_, this->weak_from_this());
        spdlog::debug("http: connection {} from {} accepted", id_, peer_);
        net::dispatch(strand_, [self = this->shared_from_this()] { self->start_read(); });
    }

    void drain() override {
        net::post(strand_, [self = this->shared_from_this()] { self->on_drain(); });
    }

    void close_now() override {
        net::post(strand_, [self = this->shared_from_this()] { self->close(); });
    }

  private:
    enum class Phase { Reading, Handling, Writing, Closing };

    const ServerOptions& opts() const { return state_->opts; }

    void start_read() {
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
        body_state_ = BodyState::None;
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
    bool idle() {
        if (buffer_.size() > 0 || (parser_ && parser_->got_some())) {
            return false;
        }
        boost::system::error_code ec;
        return stream_.socket().available(ec) == 0 || ec;
    }

    void read_some() {
        bhttp::async_read_some(
            stream_, buffer_, *parser_,
            beast::bind_front_handler(&Session::on_read, this->shared_from_this()));
    }

    void on_read(beast::error_code ec, std::size_t) {
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
    void answer_expect_continue() {
        const auto& header = parser_->get();
        const bool has_body =
            announces_body(parser_->chunked(), parser_->content_length().value_or(0));
        if (auto refused = refusal(opts().bearer_token, listener_->tcp, header, has_body)) {
            request_version_ = header.version();
            write(refused_response(header, *refused, false), false);
            return;
        }
        static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
        net::async_write(stream_, net::buffer(kContinue.data(), kContinue.size()),
                         [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
                             if (ec) {
                                 self->on_read_error(ec);
                                 return;
                             }
                             self->read_some();
                         });
    }

    void on_read_error(beast::error_code ec) {
        if (phase_ == Phase::Closing || ec == net::error::operation_aborted) {
            return;
        }
        if (ec == bhttp::error::end_of_stream) {
            spdlog::debug("http: connection {} from {}: client closed", id_, peer_);
            graceful_close();
            return;
        }
        if (ec == beast::error::timeout) {
            // basic_stream closed the socket when its timer fired.
            spdlog::warn("http: connection {} from {}: {} waiting for a request, closing", id_,
                         peer_, request_started_ ? "timed out" : "idle");
            phase_ = Phase::Closing;
            return;
        }
        if (ec == bhttp::error::body_limit) {
            spdlog::warn("http: connection {} from {}: body larger than {} bytes", id_, peer_,
                         opts().body_limit);
            write_error(
                bhttp::status::payload_too_large, "payload_too_large",
                "request body is larger than " + std::to_string(opts().body_limit) + " bytes");
            return;
        }
        if (ec == bhttp::error::header_limit || ec == bhttp::error::buffer_overflow) {
            spdlog::warn("http: connection {} from {}: header larger than {} bytes", id_, peer_,
                         opts().header_limit);
            write_error(
                bhttp::status::request_header_fields_too_large, "header_too_large",
                "request header is larger than " + std::to_string(opts().header_limit) + " bytes");
            return;
        }
        if (ec.category() == bhttp::make_error_code(bhttp::error::bad_method).category() &&
            ec != bhttp::error::partial_message) {
            spdlog::warn("http: connection {} from {}: bad request: {}", id_, peer_, ec.message());
            write_error(bhttp::status::bad_request, "bad_request",
                        "malformed HTTP request: " + ec.message());
            return;
        }
        // Reset, or closed in the middle of a request: nobody is left to answer.
        spdlog::debug("http: connection {} from {}: read: {}", id_, peer_, ec.message());
        close();
    }

    // The header is whole and no body byte is parsed yet (beast's put stops after the header):
    // a streamed route takes the request over; any other gets the JSON body limit. True when
    // the request was taken over.
    bool on_header() {
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

    Respond make_respond(std::uint64_t seq) {
        return [weak = this->weak_from_this(), strand = strand_, seq](Reply reply) {
            net::post(strand, [weak, seq, reply = std::move(reply)]() mutable {
                if (auto self = weak.lock()) {
                    self->on_response(seq, std::move(reply));
                }
            });
        };
    }

    void arm_handler_timer(std::uint64_t seq) {
        handler_timer_.expires_after(opts().handler_timeout);
        handler_timer_.async_wait([self = this->shared_from_this(), seq](beast::error_code ec) {
            if (!ec && self->phase_ == Phase::Handling && self->seq_ == seq) {
                spdlog::warn("http: connection {} from {}: no response within {} s, closing",
                             self->id_, self->peer_, self->opts().handler_timeout.count());
                self->close();
            }
        });
    }

    // A streamed request: the transport checks, then the handler gets the header and the
    // reading end of a body pipe, while this session reads the body in pieces into the pipe's
    // other end, one piece at a time (the kernel's socket buffers are the backpressure).
    void start_streamed(StreamedBody streamed) {
        phase_ = Phase::Handling;
        const auto& header = parser_->get();
        request_version_ = header.version();
        request_keep_alive_ = header.keep_alive();
        request_is_head_ = false;
        streamed_request_ = true;
        const std::uint64_t seq = ++seq_;
        const bool has_body =
            announces_body(parser_->chunked(), parser_->content_length().value_or(0));
        if (auto refused =
                refusal(opts().bearer_token, listener_->tcp, header, has_body, &streamed)) {
            write(refused_response(header, *refused, false), false);
            return;
        }
        if (parser_->content_length().value_or(0) > streamed.limit) {
            spdlog::warn("http: connection {} from {}: {} {}: body of {} bytes, over {}", id_,
                         peer_, printable(header.method_string()), printable(header.target()),
                         *parser_->content_length(), streamed.limit);
            write_error(bhttp::status::payload_too_large, "payload_too_large",
                        "request body is larger than " + std::to_string(streamed.limit) + " bytes");
            return;
        }
        auto pipe = make_body_pipe();
        if (!pipe) {
            spdlog::error("http: connection {} from {}: {}", id_, peer_, pipe.error().message());
            write(error_response(request_version_, bhttp::status::internal_server_error,
                                 "internal_error", pipe.error().message(), false),
                  false);
            return;
        }
        body_status_ = pipe->writer.status();
        body_buffer_.resize(kPieceBytes);
        body_pipe_.emplace(strand_);
        UniqueFd fd = pipe->writer.release();
        boost::system::error_code ec;
        body_pipe_->assign(unix_socket(), fd.get(), ec);
        if (!ec) {
            fd.release();
        }
        body_limit_ = streamed.limit;
        body_bytes_ = 0;
        body_state_ = BodyState::Reading;
        const bool wants_continue = !continue_handled_ && expects_continue(header);
        Request req(header);
        body_parser_.emplace(std::move(*parser_));
        parser_.reset();
        body_parser_->body_limit(streamed.limit);
        try {
            opts().stream_handler(std::move(req), std::move(pipe->reader), make_respond(seq));
        } catch (const std::exception& e) {
            spdlog::warn("http: connection {} from {}: handler threw: {}", id_, peer_, e.what());
            abort_body(Error("read body", ECANCELED, "the handler failed"));
            write(error_response(request_version_, bhttp::status::internal_server_error,
                                 "internal_error", "internal error", false),
                  false);
            return;
        }
        if (phase_ != Phase::Handling || body_state_ != BodyState::Reading) {
            return;  // answered at once
        }
        if (wants_continue) {
            continue_handled_ = true;
            static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
            body_op_pending_ = true;
            stream_.expires_after(opts().read_timeout);
            net::async_write(stream_, net::buffer(kContinue.data(), kContinue.size()),
                             [self = this->shared_from_this()](beast::error_code wec, std::size_t) {
                                 self->body_op_pending_ = false;
                                 if (self->body_state_ != BodyState::Reading) {
                                     self->after_body_op();
                                 } else if (wec) {
                                     self->on_body_read(wec, 0);
                                 } else {
                                     self->pump_body();
                                 }
                             });
            return;
        }
        pump_body();
    }

    void pump_body() {
        if (body_parser_->is_done()) {
            body_status_->complete();
            close_body_pipe();
            body_state_ = BodyState::Complete;
            // The handler now has handler_timeout to answer.
            arm_handler_timer(seq_);
            return;
        }
        auto& body = body_parser_->get().body();
        body.data = body_buffer_.data();
        body.size = body_buffer_.size();
        body.more = true;
        body_op_pending_ = true;
        stream_.expires_after(opts().read_timeout);
        bhttp::async_read_some(
            stream_, buffer_, *body_parser_,
            beast::bind_front_handler(&Session::on_body_read, this->shared_from_this()));
    }

    void on_body_read(beast::error_code ec, std::size_t) {
        body_op_pending_ = false;
        if (body_state_ != BodyState::Reading) {
            after_body_op();
            return;
        }
        if (ec == bhttp::error::need_buffer) {
            ec = {};
        }
        const std::size_t got = body_buffer_.size() - body_parser_->get().body().size;
        if (ec) {
            const std::string after = " after " + std::to_string(body_bytes_ + got) + " bytes";
            if (ec == bhttp::error::body_limit) {
                spdlog::warn("http: connection {} from {}: body larger than {} bytes", id_, peer_,
                             body_limit_);
                abort_body(
                    Error("read body", EFBIG,
                          "larger than the limit of " + std::to_string(body_limit_) + " bytes"));
                write_error(
                    bhttp::status::payload_too_large, "payload_too_large",
                    "request body is larger than " + std::to_string(body_limit_) + " bytes");
            } else if (ec == beast::error::timeout) {
                spdlog::warn("http: connection {} from {}: body timed out{}", id_, peer_, after);
                abort_body(Error("read body", ETIMEDOUT,
                                 "the client sent nothing for " +
                                     std::to_string(opts().read_timeout.count()) + " s" + after));
                close();
            } else if (ec.category() ==
                           bhttp::make_error_code(bhttp::error::bad_method).category() &&
                       ec != bhttp::error::partial_message) {
                spdlog::warn("http: connection {} from {}: bad body: {}", id_, peer_, ec.message());
                abort_body(Error("read body", EBADMSG, "malformed body: " + ec.message() + after));
                write_error(bhttp::status::bad_request, "bad_request",
                            "malformed HTTP request: " + ec.message());
            } else {
                spdlog::warn("http: connection {} from {}: the client went away{}: {}", id_, peer_,
                             after, ec.message());
                abort_body(
                    Error("read body", ECONNRESET, "the client closed the connection" + after));
                close();
            }
            return;
        }
        body_bytes_ += got;
        if (got == 0) {
            pump_body();
            return;
        }
        body_op_pending_ = true;
        net::async_write(*body_pipe_, net::buffer(body_buffer_.data(), got),
                         [self = this->shared_from_this()](beast::error_code wec, std::size_t) {
                             self->on_pipe_write(wec);
                         });
    }

    void on_pipe_write(beast::error_code ec) {
        body_op_pending_ = false;
        if (body_state_ != BodyState::Reading) {
            after_body_op();
            return;
        }
        if (ec) {
            // The handler closed its end: it has read enough and answers (or already has).
            spdlog::debug("http: connection {} from {}: the handler stopped reading the body: {}",
                          id_, peer_, ec.message());
            body_state_ = BodyState::Abandoned;
            close_body_pipe();
            arm_handler_timer(seq_);
            after_body_op();
            return;
        }
        pump_body();
    }

    // The body is given up (an early response, or the handler stopped reading): once the
    // read or pipe write in flight has finished, the response that waited for it goes out.
    void after_body_op() {
        if (phase_ == Phase::Closing || body_op_pending_ || !pending_reply_) {
            return;
        }
        Reply reply = std::move(*pending_reply_);
        pending_reply_.reset();
        deliver(std::move(reply));
    }

    void abort_body(Error why) {
        if (body_state_ != BodyState::Reading) {
            return;
        }
        body_state_ = BodyState::Broken;
        if (body_status_) {
            body_status_->broken(std::move(why));
        }
        close_body_pipe();
    }

    void close_body_pipe() {
        if (body_pipe_) {
            boost::system::error_code ignored;
            body_pipe_->close(ignored);
        }
    }

    void handle_request() {
        phase_ = Phase::Handling;
        Request req = parser_->release();
        parser_.reset();
        request_version_ = req.version();
        request_keep_alive_ = req.keep_alive();
        request_is_head_ = req.method() == bhttp::verb::head;
        const std::uint64_t seq = ++seq_;

        if (auto refused = refusal(opts().bearer_token, listener_->tcp, req,
                                   !req.body().empty() || req.chunked())) {
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
            spdlog::warn("http: connection {} from {}: handler threw: {}", id_, peer_, e.what());
            on_response(seq, error_response(request_version_, bhttp::status::internal_server_error,
                                            "internal_error", "internal error", false));
        }
    }

    Response refused_response(const bhttp::request_header<>& req, const Refusal& refused,
                              bool keep_alive) {
        spdlog::warn("http: connection {} from {}: {} {}: {}", id_, peer_,
                     printable(req.method_string()), printable(req.target()), refused.message);
        return refusal_response(req, refused, keep_alive);
    }

    void on_response(std::uint64_t seq, Reply reply) {
        if (phase_ != Phase::Handling || seq != seq_ || pending_reply_) {
            spdlog::debug("http: connection {} from {}: dropping a late or repeated response", id_,
                          peer_);
            return;
        }
        handler_timer_.cancel();
        if (body_state_ == BodyState::Reading) {
            // Answered before the end of the body: stop reading it; the connection closes
            // after the response (an unread body cannot be skipped to the next request).
            spdlog::debug("http: connection {} from {}: answered before the end of the body", id_,
                          peer_);
            abort_body(Error("read body", ECANCELED, "answered before the end of the body"));
            body_state_ = BodyState::Abandoned;
        }
        if (body_op_pending_) {
            pending_reply_.emplace(std::move(reply));
            boost::system::error_code ignored;
            stream_.socket().cancel(ignored);
            return;
        }
        deliver(std::move(reply));
    }

    void deliver(Reply reply) {
        const bool whole_body = !streamed_request_ || body_state_ == BodyState::Complete;
        const bool keep =
            request_keep_alive_ && whole_body && !draining_ && !state_->draining.load();
        if (reply.streamed()) {
            send_stream(std::move(reply.stream()), keep);
            return;
        }
        Response& res = reply.response();
        write(std::move(res), keep && res.keep_alive());
    }

    // A streamed response: the header, then each piece the worker writes into the pipe as a
    // chunk, then the last chunk once the worker said the body is complete.
    void send_stream(StreamedResponse streamed, bool keep_alive) {
        phase_ = Phase::Writing;
        stream_status_ = streamed.body.status();
        UniqueFd fd = streamed.body.release();
        stream_pipe_.emplace(strand_);
        boost::system::error_code ec;
        stream_pipe_->assign(unix_socket(), fd.get(), ec);
        if (ec) {
            spdlog::error("http: connection {} from {}: streamed response: {}", id_, peer_,
                          ec.message());
            close();
            return;
        }
        fd.release();
        body_buffer_.resize(kPieceBytes);
        stream_chunked_ = request_version_ >= 11;
        stream_keep_alive_ = keep_alive && stream_chunked_;
        stream_bytes_ = 0;
        stream_header_.emplace(std::move(streamed.header));
        stream_header_->version(request_version_);
        stream_header_->keep_alive(stream_keep_alive_);
        stream_header_->erase(bhttp::field::content_length);
        if (stream_chunked_) {
            stream_header_->chunked(true);
        }
        stream_serializer_.emplace(*stream_header_);
        stream_.expires_after(opts().read_timeout);
        bhttp::async_write_header(
            stream_, *stream_serializer_,
            [self = this->shared_from_this()](beast::error_code wec, std::size_t) {
                self->on_stream_written(wec);
            });
    }

    void on_stream_written(beast::error_code ec) {
        if (ec) {
            if (ec != net::error::operation_aborted) {
                spdlog::warn(
                    "http: connection {} from {}: streamed response cut after {} bytes: "
                    "write: {}",
                    id_, peer_, stream_bytes_, ec.message());
            }
            close();
            return;
        }
        stream_pipe_->async_read_some(
            net::buffer(body_buffer_),
            [self = this->shared_from_this()](beast::error_code rec, std::size_t n) {
                self->on_stream_piece(rec, n);
            });
    }

    void on_stream_piece(beast::error_code ec, std::size_t n) {
        if (phase_ == Phase::Closing) {
            return;
        }
        if (n > 0) {
            stream_bytes_ += n;
            stream_.expires_after(opts().read_timeout);
            auto done = [self = this->shared_from_this()](beast::error_code wec, std::size_t) {
                self->on_stream_written(wec);
            };
            if (stream_chunked_) {
                net::async_write(stream_, bhttp::make_chunk(net::buffer(body_buffer_.data(), n)),
                                 std::move(done));
            } else {
                net::async_write(stream_, net::buffer(body_buffer_.data(), n), std::move(done));
            }
            return;
        }
        auto ended = ec == net::error::eof
                         ? stream_status_->outcome()
                         : Result<void>(Error("read body", ec.value(), ec.message()));
        if (!ended) {
            // No last chunk: the client sees a broken transfer, not a short body.
            spdlog::error(
                "http: connection {} from {}: streamed response aborted after {} "
                "bytes: {}",
                id_, peer_, stream_bytes_, ended.error().message());
            close();
            return;
        }
        stream_pipe_.reset();
        if (!stream_chunked_) {
            on_write({}, false);
            return;
        }
        net::async_write(stream_, bhttp::make_chunk_last(),
                         [self = this->shared_from_this()](beast::error_code wec, std::size_t) {
                             self->on_write(wec, self->stream_keep_alive_);
                         });
    }

    void write_error(bhttp::status status, std::string_view code, const std::string& message) {
        request_version_ = parser_ && parser_->is_header_done() ? parser_->get().version() : 11;
        write(error_response(11, status, code, message, false), false);
    }

    void write(Response res, bool keep_alive) {
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
        bhttp::async_write(
            stream_, *response_,
            [self = this->shared_from_this(), keep_alive](beast::error_code ec, std::size_t) {
                self->on_write(ec, keep_alive);
            });
    }

    void on_write(beast::error_code ec, bool keep_alive) {
        response_.reset();
        stream_serializer_.reset();
        stream_header_.reset();
        stream_pipe_.reset();
        stream_status_.reset();
        body_parser_.reset();
        body_pipe_.reset();
        body_status_.reset();
        request_is_head_ = false;
        if (ec) {
            if (ec != net::error::operation_aborted) {
                spdlog::debug("http: connection {} from {}: write: {}", id_, peer_, ec.message());
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

    void on_drain() {
        draining_ = true;
        if (phase_ == Phase::Reading && idle()) {
            spdlog::debug("http: connection {} from {}: closing idle connection", id_, peer_);
            close();
        }
    }

    // Sends FIN, then reads and discards what the client still sends (say, the rest of a body
    // we refused) for a bounded time: closing with unread data makes the kernel send RST, and
    // the client could lose the response we just wrote. (Apache's lingering close, 2 s.)
    void graceful_close() {
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

    void linger() {
        stream_.async_read_some(
            net::buffer(linger_buffer_),
            [self = this->shared_from_this()](beast::error_code ec, std::size_t n) {
                self->lingered_ += n;
                if (ec || self->lingered_ > kLingerLimit) {
                    self->close();
                    return;
                }
                self->linger();
            });
    }

    void close() {
        phase_ = Phase::Closing;
        handler_timer_.cancel();
        abort_body(Error("read body", ECONNRESET, "the connection closed"));
        close_body_pipe();
        if (stream_pipe_) {
            // The worker writing a streamed response gets EPIPE and stops.
            boost::system::error_code ignored;
            stream_pipe_->close(ignored);
        }
        stream_.close();
    }

    static constexpr std::size_t kLingerLimit = 1024 * 1024;
    static constexpr std::size_t kPieceBytes = 64 * 1024;  // of a streamed body

    std::shared_ptr<ServerState> state_;
    std::shared_ptr<ListenerInfo> listener_;
    const std::uint64_t id_;
    const std::string peer_;
    const typename Socket::executor_type strand_;
    Stream stream_;
    net::steady_timer handler_timer_;
    beast::flat_buffer buffer_;
    std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
    std::optional<Response> response_;
    // A streamed request body (start_streamed) and a streamed response (send_stream).
    enum class BodyState { None, Reading, Complete, Abandoned, Broken };
    std::optional<bhttp::request_parser<bhttp::buffer_body>> body_parser_;
    std::optional<unix_socket::socket> body_pipe_;
    std::shared_ptr<BodyStatus> body_status_;
    // One piece, either way; allocated by the first streamed body only, so that idle
    // connections (up to --max-connections per listener) do not each hold 64 KiB.
    std::vector<char> body_buffer_;
    std::uint64_t body_limit_ = 0;
    std::uint64_t body_bytes_ = 0;
    BodyState body_state_ = BodyState::None;
    bool streamed_request_ = false;
    bool header_checked_ = false;
    bool body_op_pending_ = false;  // a body read, pipe write or 100 Continue in flight
    std::optional<Reply> pending_reply_;
    std::optional<bhttp::response<bhttp::empty_body>> stream_header_;
    std::optional<bhttp::response_serializer<bhttp::empty_body>> stream_serializer_;
    std::optional<unix_socket::socket> stream_pipe_;
    std::shared_ptr<BodyStatus> stream_status_;
    std::uint64_t stream_bytes_ = 0;
    bool stream_chunked_ = true;
    bool stream_keep_alive_ = false;
    std::array<char, 16 * 1024> linger_buffer_{};
    std::size_t lingered_ = 0;
    Phase phase_ = Phase::Reading;
    bool first_request_ = true;
    bool request_started_ = false;
    bool continue_handled_ = false;
    bool draining_ = false;
    bool request_keep_alive_ = false;
    bool request_is_head_ = false;
    unsigned request_version_ = 11;
    std::uint64_t seq_ = 0;  // numbers requests, so a late respond cannot answer a later one
};

// Accepts connections on one socket, each into a fresh strand. The acceptor is touched from
// the io_context (accept completions) and from stop_accepting's thread, so a mutex guards it.
template <class Protocol>
class Listener final : public ListenerBase,
                       public std::enable_shared_from_this<Listener<Protocol>> {
  public:
    using Acceptor = typename Protocol::acceptor;

    Listener(net::io_context& ioc, std::shared_ptr<ServerState> state,
             std::shared_ptr<ListenerInfo> info)
        : ioc_(ioc),
          state_(std::move(state)),
          info_(std::move(info)),
          name_(info_->name),
          acceptor_(ioc),
          retry_timer_(ioc) {}

    ~Listener() override { close(); }

    Acceptor& acceptor() { return acceptor_; }

    // For a unix socket: the file to remove on close, if it is still the one we bound; it is
    // removed through the directory handle, never by a path that could now lead elsewhere.
    void own_socket_file(SocketDir dir, dev_t dev, ino_t ino) {
        socket_dir_ = std::move(dir);
        socket_dev_ = dev;
        socket_ino_ = ino;
    }

    void start() override {
        std::lock_guard lock(mutex_);
        arm();
    }

    void close() override {
        std::lock_guard lock(mutex_);
        if (closed_) {
            return;
        }
        closed_ = true;
        boost::system::error_code ec;
        acceptor_.close(ec);
        retry_timer_.cancel();
        if (socket_dir_.dir) {
            const int dir = socket_dir_.dir.get();
            const char* name = socket_dir_.name.c_str();
            struct stat st {};
            // Another server may have replaced the file since; leave its socket alone.
            if (::fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_dev == socket_dev_ &&
                st.st_ino == socket_ino_ && ::unlinkat(dir, name, 0) != 0) {
                spdlog::warn("http: remove {}: {}", socket_dir_.path(), describe_errno(errno));
            }
            socket_dir_.dir.reset();
        }
        spdlog::debug("http: stopped listening on {}", name_);
    }

  private:
    // Called with mutex_ held.
    void arm() {
        if (closed_) {
            return;
        }
        acceptor_.async_accept(net::make_strand(ioc_), [self = this->shared_from_this()](
                                                           beast::error_code ec, auto socket) {
            self->on_accept(ec, typename Protocol::socket(std::move(socket)));
        });
    }

    void on_accept(beast::error_code ec, typename Protocol::socket socket) {
        if (ec == net::error::operation_aborted) {
            return;
        }
        if (!ec) {
            // Asio accepts without SOCK_CLOEXEC; the agent never execs, but keep the rule.
            ::fcntl(socket.native_handle(), F_SETFD, FD_CLOEXEC);
            // Only this accept loop adds to the count, one accept at a time, so it never
            // overshoots. A refused connection costs an fd for a moment, not for a timeout.
            if (info_->connections.load() >= state_->opts.max_connections) {
                const std::uint64_t refused = state_->refused.fetch_add(1) + 1;
                boost::system::error_code ignored;
                socket.close(ignored);
                if (refused == 1 || refused % 1000 == 0) {
                    spdlog::warn(
                        "http: {} holds {} connections (--max-connections); closing new ones at "
                        "once ({} so far)",
                        name_, state_->opts.max_connections, refused);
                }
            } else {
                info_->connections.fetch_add(1);
                std::make_shared<Session<Protocol>>(state_, info_, std::move(socket))->run();
            }
        }
        std::lock_guard lock(mutex_);
        if (closed_) {
            return;
        }
        if (ec) {
            // EMFILE, ENFILE, ENOBUFS...: retry a little later rather than spin.
            spdlog::warn("http: accept on {}: {}", name_, ec.message());
            retry_timer_.expires_after(std::chrono::milliseconds(100));
            retry_timer_.async_wait([self = this->shared_from_this()](beast::error_code wait_ec) {
                if (!wait_ec) {
                    std::lock_guard relock(self->mutex_);
                    self->arm();
                }
            });
            return;
        }
        arm();
    }

    net::io_context& ioc_;
    std::shared_ptr<ServerState> state_;
    std::shared_ptr<ListenerInfo> info_;
    const std::string name_;
    std::mutex mutex_;
    Acceptor acceptor_;
    net::steady_timer retry_timer_;
    bool closed_ = false;
    SocketDir socket_dir_;
    dev_t socket_dev_ = 0;
    ino_t socket_ino_ = 0;
};

Error listen_error(const ListenAddress& address, int code, std::string detail = {}) {
    return Error("listen " + address.to_string(), code, std::move(detail));
}

Result<std::shared_ptr<ListenerBase>> open_tcp(net::io_context& ioc,
                                               const std::shared_ptr<ServerState>& state,
                                               const ListenAddress& address, ListenAddress& bound) {
    boost::system::error_code ec;
    // "localhost" means the IPv4 loopback: resolving it would block, and may yield ::1 too.
    const auto ip =
        net::ip::make_address(address.host == "localhost" ? "127.0.0.1" : address.host, ec);
    if (ec) {
        return listen_error(address, EINVAL, "not an IP address");
    }
    const tcp::endpoint endpoint(ip, address.port);
    auto info = std::make_shared<ListenerInfo>();
    info->name = address.to_string();
    auto listener = std::make_shared<Listener<tcp>>(ioc, state, info);
    UniqueFd fd(::socket(ip.is_v6() ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) {
        return listen_error(address, errno);
    }
    auto& acceptor = listener->acceptor();
    acceptor.assign(endpoint.protocol(), fd.get(), ec);
    if (ec) {
        return listen_error(address, ec.value());
    }
    fd.release();
    // Lets a restarted agent bind while connections of the old one sit in TIME_WAIT.
    acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec) {
        acceptor.bind(endpoint, ec);
    }
    if (!ec) {
        acceptor.listen(net::socket_base::max_listen_connections, ec);
    }
    if (ec) {
        return listen_error(address, ec.value());
    }
    bound = address;
    bound.port = acceptor.local_endpoint(ec).port();
    // Written before start(): no session reads it yet.
    info->name = bound.to_string();
    info->tcp = bound;
    spdlog::info("http: listening on {}", bound.to_string());
    return std::shared_ptr<ListenerBase>(std::move(listener));
}

// Whether a server is accepting on the unix socket at path: connect() to a socket file nobody
// listens on fails with ECONNREFUSED at once, so this does not block.
bool unix_socket_is_live(const std::string& path) {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd) {
        return false;
    }
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    path.copy(addr.sun_path, sizeof addr.sun_path - 1);
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0) {
        return true;
    }
    return errno == EAGAIN || errno == EINPROGRESS;  // backlog full: someone is listening
}

// The socket file is made through a directory handle that was checked (open_socket_dir): no
// symlink is followed, an old file is replaced only if it is a dead socket, and the file gets
// its group and mode before listen(); until then connect() is refused, so nobody gets in
// through the umask's mode in between.
Result<std::shared_ptr<ListenerBase>> open_unix(net::io_context& ioc,
                                                const std::shared_ptr<ServerState>& state,
                                                const ListenAddress& address,
                                                ListenAddress& bound) {
    auto dir = open_socket_dir(address.path, state->opts.unix_socket_group);
    if (!dir) {
        return std::move(dir).error().within("listen " + address.to_string());
    }
    // Copies: *dir moves into the listener below, the descriptor number stays valid with it.
    const int dirfd = dir->dir.get();
    const std::string name_copy = dir->name;
    const char* name = name_copy.c_str();
    const std::string via = dir->bind_path();
    struct stat st {};
    if (::fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            return listen_error(address, EEXIST,
                                S_ISLNK(st.st_mode)
                                    ? "the path is a symbolic link; refusing to replace it"
                                    : "the path is not a socket; refusing to replace it");
        }
        if (unix_socket_is_live(via)) {
            return listen_error(address, EADDRINUSE, "another server is listening on it");
        }
        // A socket file left by a server that died: bind() would fail with EADDRINUSE.
        if (::unlinkat(dirfd, name, 0) != 0 && errno != ENOENT) {
            return listen_error(address, errno, "removing the stale socket file");
        }
        spdlog::info("http: removed stale socket file {}", address.path);
    } else if (errno != ENOENT) {
        return listen_error(address, errno);
    }

    auto info = std::make_shared<ListenerInfo>();
    info->name = address.to_string();
    auto listener = std::make_shared<Listener<unix_socket>>(ioc, state, info);
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) {
        return listen_error(address, errno);
    }
    boost::system::error_code ec;
    auto& acceptor = listener->acceptor();
    acceptor.assign(unix_socket(), fd.get(), ec);
    if (ec) {
        return listen_error(address, ec.value());
    }
    fd.release();
    // bind() creates the file and fails with EADDRINUSE on anything already there, a symlink
    // included: it never follows one.
    acceptor.bind(unix_socket::endpoint(via), ec);
    if (ec) {
        return listen_error(address, ec.value());
    }
    if (::fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        return listen_error(address, errno, "stat after bind");
    }
    if (!S_ISSOCK(st.st_mode)) {
        return listen_error(address, EEXIST, "the socket file was replaced during bind");
    }
    const std::optional<gid_t> group = dir->group;
    const mode_t mode = dir->socket_mode();
    listener->own_socket_file(std::move(*dir), st.st_dev, st.st_ino);
    // Connecting needs write permission on the socket file.
    if (group &&
        ::fchownat(dirfd, name, static_cast<uid_t>(-1), *group, AT_SYMLINK_NOFOLLOW) != 0) {
        return listen_error(address, errno, "chown to group " + state->opts.unix_socket_group);
    }
    // fchmodat cannot refuse a symlink, but the file was a socket just above and nobody else
    // may write in the checked directory.
    if (::fchmodat(dirfd, name, mode, 0) != 0) {
        return listen_error(address, errno, mode == 0660 ? "chmod 0660" : "chmod 0600");
    }
    acceptor.listen(net::socket_base::max_listen_connections, ec);
    if (ec) {
        return listen_error(address, ec.value());
    }
    bound = address;
    spdlog::info("http: listening on {} (mode {}{})", bound.to_string(),
                 mode == 0660 ? "0660" : "0600",
                 group ? ", group " + state->opts.unix_socket_group : "");
    return std::shared_ptr<ListenerBase>(std::move(listener));
}

}  // namespace
}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Server.

Result<std::unique_ptr<Server>> Server::create(net::io_context& ioc, ServerOptions opts,
                                               Handler handler) {
    if (opts.listen.empty()) {
        return Error("start http server", EINVAL, "no listen address");
    }
    if (!handler) {
        return Error("start http server", EINVAL, "no handler");
    }
    auto state = std::make_shared<detail::ServerState>(std::move(opts), std::move(handler));
    std::vector<std::shared_ptr<detail::ListenerBase>> listeners;
    std::vector<ListenAddress> bound;
    for (const auto& address : state->opts.listen) {
        ListenAddress actual;
        auto listener = address.kind == ListenAddress::Kind::Tcp
                            ? detail::open_tcp(ioc, state, address, actual)
                            : detail::open_unix(ioc, state, address, actual);
        if (!listener) {
            // The listeners opened so far close (and remove their socket files) on the way out.
            return std::move(listener).error();
        }
        listeners.push_back(std::move(*listener));
        bound.push_back(std::move(actual));
    }
    for (auto& listener : listeners) {
        listener->start();
    }
    return std::unique_ptr<Server>(
        new Server(std::move(state), std::move(listeners), std::move(bound)));
}

Server::Server(std::shared_ptr<detail::ServerState> state,
               std::vector<std::shared_ptr<detail::ListenerBase>> listeners,
               std::vector<ListenAddress> bound)
    : state_(std::move(state)), listeners_(std::move(listeners)), bound_(std::move(bound)) {}

Server::~Server() {
    stop_accepting();
    for (auto& session : state_->live()) {
        session->close_now();
    }
}

void Server::stop_accepting() {
    // Set before closing the listeners: a session accepted in the meantime sees the flag when
    // it starts reading, and every session seen below gets drain().
    const bool was_draining = state_->draining.exchange(true);
    for (auto& listener : listeners_) {
        listener->close();
    }
    if (!was_draining) {
        for (auto& session : state_->live()) {
            session->drain();
        }
    }
}

std::size_t Server::connections() const {
    return state_->connections.load();
}

std::uint64_t Server::connections_refused() const {
    return state_->refused.load();
}

std::vector<ListenAddress> Server::bound() const {
    return bound_;
}

}  // namespace wrenn::http
