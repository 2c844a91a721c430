#pragma once

#include <array>
#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "http/connection/server_state.hpp"
#include "http/core/message.hpp"
#include "http/policy/request_policy.hpp"
#include "http/stream/connection_stream.hpp"
#include "http/stream/request_body_stream.hpp"
#include "http/stream/response_stream.hpp"

namespace wrenn::http::detail {

// One HTTP/1.1 connection: reads requests one at a time with limits and timeouts, applies the
// request policy, hands each request to the handler and writes its response, then reads the
// next (keep-alive) or closes gracefully. A streamed request body goes through a
// RequestBodyStream, a streamed response through a ResponseStream. All its state is touched
// only on its strand; the strand is the executor of the socket it was accepted into.
class Session final : public SessionBase, public std::enable_shared_from_this<Session> {
  public:
    using Socket = boost::asio::generic::stream_protocol::socket;

    // The listener has counted this connection in listener->connections already; peer names
    // the client in log lines ("127.0.0.1:41234", or the listener's name for a unix socket).
    Session(std::shared_ptr<ServerState> state, std::shared_ptr<ListenerInfo> listener,
            std::string peer, Socket socket);
    ~Session() override;
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

    // Registers with the server and starts reading the first request.
    void run();
    void drain() override;
    void close_now() override;
    void evict() override;

  private:
    enum class Phase { Reading, Handling, Writing, Closing };

    const ServerOptions& opts() const { return state_->opts; }

    // Reading a request (a whole one, or the header of a streamed one).
    void start_read();
    bool idle();
    void read_some();
    void on_read(boost::beast::error_code ec, std::size_t);
    void answer_expect_continue();
    void on_read_error(boost::beast::error_code ec);
    bool on_header();
    void arm_auth_timer();
    void note_authenticated();

    // Handing it over and waiting for the response.
    Respond make_respond(std::uint64_t seq);
    void arm_handler_timer(std::uint64_t seq);
    void start_streamed(StreamedBody streamed);
    void on_body_end(RequestBodyStream::End end, boost::beast::error_code ec);
    void after_body_op();
    void handle_request();
    Response refused_response(const RequestHeader& req, const Refusal& refused, bool keep_alive);
    void on_response(std::uint64_t seq, Reply reply);

    // Writing the response, then the next request or the end.
    void deliver(Reply reply);
    void send_stream(StreamedResponse streamed, bool keep_alive);
    void write_error(boost::beast::http::status status, std::string_view code,
                     const std::string& message);
    void write(Response res, bool keep_alive);
    void on_write(boost::beast::error_code ec, bool keep_alive);
    void on_drain();
    void graceful_close();
    void linger();
    void close();

    static constexpr std::size_t kLingerLimit = 1024 * 1024;

    std::shared_ptr<ServerState> state_;
    std::shared_ptr<ListenerInfo> listener_;
    const std::uint64_t id_;
    const std::string peer_;
    const std::string who_;  // "connection 7 from 127.0.0.1:41234", for log lines
    const boost::asio::any_io_executor strand_;
    ConnectionStream stream_;
    boost::asio::steady_timer handler_timer_;
    // Closes the connection if no request has shown the bearer token by then.
    boost::asio::steady_timer auth_timer_;
    boost::beast::flat_buffer buffer_;
    std::optional<boost::beast::http::request_parser<boost::beast::http::string_body>> parser_;
    std::optional<Response> response_;
    // One piece of a streamed body, either way; allocated by the first streamed body only, so
    // that idle connections (up to --max-connections per listener) do not each hold 64 KiB.
    std::vector<char> piece_;
    std::optional<RequestBodyStream> body_;          // a streamed request's body
    std::optional<ResponseStream> response_stream_;  // a streamed response
    bool streamed_request_ = false;
    bool header_checked_ = false;
    std::optional<Reply> pending_reply_;  // waits for the body's operation in flight
    std::array<char, 16 * 1024> linger_buffer_{};
    std::size_t lingered_ = 0;
    Phase phase_ = Phase::Reading;
    std::atomic<bool> evicted_{false};  // its slot on the listener is given up already
    bool authenticated_ = false;        // a request showed the token, or the server has none
    bool first_request_ = true;
    bool request_started_ = false;
    bool continue_handled_ = false;
    bool draining_ = false;
    bool request_keep_alive_ = false;
    bool request_is_head_ = false;
    unsigned request_version_ = 11;
    std::uint64_t seq_ = 0;  // numbers requests, so a late respond cannot answer a later one
};

}  // namespace wrenn::http::detail
