#pragma once

// What the HTTP transport's tests share: a blocking raw-socket client that sends any bytes and
// parses what comes back, and the io_context threads a test server runs on.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/unique_fd.hpp"
#include "http/core/message.hpp"

namespace wrenn::http::testing {

// A blocking test client on a raw socket, with poll() deadlines so a broken server fails the
// test instead of hanging it.
class Client {
  public:
    // 0, or the errno of a connect() that failed.
    static int connect_tcp(std::uint16_t port, UniqueFd& out) {
        UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = htons(port);
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        return connect(std::move(fd), reinterpret_cast<sockaddr*>(&addr), sizeof addr, out);
    }
    static int connect_unix(const std::string& path, UniqueFd& out) {
        UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        path.copy(addr.sun_path, sizeof addr.sun_path - 1);
        return connect(std::move(fd), reinterpret_cast<sockaddr*>(&addr), sizeof addr, out);
    }

    // To 127.0.0.1:port, or to a unix socket; the test fails when connect() does.
    explicit Client(std::uint16_t port) { require_connected(connect_tcp(port, fd_)); }
    explicit Client(const std::string& unix_path) {
        require_connected(connect_unix(unix_path, fd_));
    }

    // Sends all of data; false when the server has closed or reset the connection.
    bool send(std::string_view data) {
        while (!data.empty()) {
            const ssize_t n = ::send(fd_.get(), data.data(), data.size(), MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EINTR) {
                    continue;
                }
                return false;
            }
            data.remove_prefix(static_cast<std::size_t>(n));
        }
        return true;
    }

    // Reads one response (a 100 Continue counts as one); nullopt on EOF, reset, timeout or
    // bytes that are not HTTP.
    std::optional<Response> read_response(
        std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
        boost::beast::http::response_parser<boost::beast::http::string_body> parser;
        parser.eager(true);
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        for (;;) {
            if (!buffer_.empty()) {
                boost::beast::error_code ec;
                const auto used = parser.put(boost::asio::buffer(buffer_), ec);
                buffer_.erase(0, used);
                if (parser.is_done()) {
                    return parser.release();
                }
                if (ec && ec != boost::beast::http::error::need_more) {
                    return std::nullopt;
                }
                if (used > 0) {
                    continue;
                }
            }
            if (receive(deadline) <= 0) {
                return std::nullopt;
            }
        }
    }

    // Whether the server closes the connection (EOF or reset) before the timeout, discarding
    // anything it still sends.
    bool closed_by_server(std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        for (;;) {
            const int got = receive(deadline);
            if (got == -ETIMEDOUT) {
                return false;
            }
            if (got <= 0) {
                return true;
            }
        }
    }

    // Abortive close: RST instead of FIN.
    void reset() {
        linger lg{1, 0};
        ::setsockopt(fd_.get(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        fd_.reset();
    }
    void close() { fd_.reset(); }

  private:
    static int connect(UniqueFd fd, const sockaddr* addr, socklen_t size, UniqueFd& out) {
        if (!fd) {
            return errno;
        }
        if (::connect(fd.get(), addr, size) != 0) {
            return errno;
        }
        out = std::move(fd);
        return 0;
    }
    static void require_connected(int err) {
        INFO("connect: " << std::strerror(err));
        REQUIRE(err == 0);
    }

    // >0 bytes appended to buffer_, 0 on EOF, -errno on error, -ETIMEDOUT at the deadline.
    int receive(std::chrono::steady_clock::time_point deadline) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) {
            return -ETIMEDOUT;
        }
        pollfd pfd{fd_.get(), POLLIN, 0};
        const int ready = ::poll(&pfd, 1, static_cast<int>(left.count()));
        if (ready == 0) {
            return -ETIMEDOUT;
        }
        if (ready < 0) {
            return -errno;
        }
        char chunk[16384];
        const ssize_t n = ::recv(fd_.get(), chunk, sizeof chunk, 0);
        if (n < 0) {
            return -errno;
        }
        buffer_.append(chunk, static_cast<std::size_t>(n));
        return static_cast<int>(n);
    }

    UniqueFd fd_;
    std::string buffer_;
};

// An io_context run by two threads, as the agent may run it. stop() waits (up to 5 s) for the
// work left to end once the server is gone, then stops and joins the threads.
struct IoThreads {
    boost::asio::io_context ioc;
    std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work;
    std::vector<std::thread> threads;

    void start() {
        work.emplace(ioc.get_executor());
        for (int i = 0; i < 2; ++i) {
            threads.emplace_back([this] { ioc.run(); });
        }
    }
    void stop() {
        work.reset();
        // Sessions close at once when the server goes; give them a moment, then stop anyway.
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
        while (!ioc.stopped() && std::chrono::steady_clock::now() < deadline) {
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        ioc.stop();
        for (auto& t : threads) {
            t.join();
        }
        threads.clear();
    }
    ~IoThreads() {
        if (!threads.empty()) {
            stop();
        }
    }
};

}  // namespace wrenn::http::testing
