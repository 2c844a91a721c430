#include "http/connection/listener.hpp"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core/error.hpp>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>

#include "common/unique_fd.hpp"
#include "http/connection/session.hpp"
#include "http/connection/socket_dir.hpp"

namespace wrenn::http::detail {

namespace net = boost::asio;
namespace beast = boost::beast;
using tcp = boost::asio::ip::tcp;
using unix_socket = boost::asio::local::stream_protocol;

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
            // When full, the oldest connection that has not shown the token gives up its slot.
            if (info_->connections.load() >= state_->opts.max_connections) {
                if (auto oldest = info_->take_oldest_unauthenticated()) {
                    oldest->evict();
                    if (++evicted_ == 1 || evicted_ % 1000 == 0) {
                        spdlog::warn(
                            "http: {} is full (--max-connections {}); a new connection "
                            "closes the oldest one that has not shown the bearer token "
                            "({} so far)",
                            name_, state_->opts.max_connections, evicted_);
                    }
                }
            }
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
                std::string peer = describe_peer(socket, *info_);
                std::make_shared<Session>(state_, info_, std::move(peer),
                                          Session::Socket(std::move(socket)))
                    ->run();
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
    std::uint64_t evicted_ = 0;  // touched by the accept loop only
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

Result<std::shared_ptr<ListenerBase>> open_listener(net::io_context& ioc,
                                                    const std::shared_ptr<ServerState>& state,
                                                    const ListenAddress& address,
                                                    ListenAddress& bound) {
    return address.kind == ListenAddress::Kind::Tcp ? open_tcp(ioc, state, address, bound)
                                                    : open_unix(ioc, state, address, bound);
}

}  // namespace wrenn::http::detail
