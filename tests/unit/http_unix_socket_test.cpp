// The HTTP transport's unix sockets, in a temp dir: their modes and group, the checked
// directory they are made in, and bind errors; a stale socket file is replaced, nothing else.
#include <fcntl.h>
#include <grp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>
#include <cerrno>
#include <filesystem>
#include <string>

#include "common/unique_fd.hpp"
#include "http/connection/socket_dir.hpp"
#include "http/server.hpp"
#include "http_test_server.hpp"

namespace bhttp = boost::beast::http;
namespace net = boost::asio;
using namespace std::chrono_literals;
using namespace wrenn::http::testing;
using wrenn::UniqueFd;
using wrenn::http::ListenAddress;
using wrenn::http::Server;
using wrenn::http::ServerOptions;

TEST_CASE("http server: unix socket is 0600, replaces a stale file, and is removed", "[http]") {
    TempDir dir;
    const std::string path = (dir.path / "agent.sock").string();

    // A stale socket file, as a crashed agent leaves it: bound, then closed without unlink.
    {
        UniqueFd stale(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        path.copy(addr.sun_path, sizeof addr.sun_path - 1);
        REQUIRE(::bind(stale.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    }
    REQUIRE(std::filesystem::is_socket(path));

    ServerOptions opts;
    opts.listen = {unix_address(path), loopback_any_port()};
    opts.unix_socket_group = "";  // no group: 0600 even where a group "wrenn" exists
    {
        TestServer ts(opts, echo);
        struct stat st {};
        REQUIRE(::stat(path.c_str(), &st) == 0);
        CHECK(S_ISSOCK(st.st_mode));
        CHECK((st.st_mode & 07777) == 0600);
        REQUIRE(ts.server->bound().size() == 2);
        CHECK(ts.server->bound()[0].to_string() == "unix:" + path);
        CHECK(ts.server->bound()[1].port != 0);

        Client c(path);
        REQUIRE(c.send(get("/over-unix")));
        auto res = c.read_response();
        REQUIRE(res);
        CHECK(res->body() == "GET /over-unix");

        // A second server on the same live socket is refused and leaves the file alone.
        net::io_context other;
        ServerOptions same;
        same.listen = {unix_address(path)};
        auto second = Server::create(other, same, echo);
        REQUIRE_FALSE(second.ok());
        CHECK(second.error().code() == EADDRINUSE);
        CHECK(std::filesystem::is_socket(path));
        Client still(path);
        REQUIRE(still.send(get("/still")));
        CHECK(still.read_response());
    }
    CHECK_FALSE(std::filesystem::exists(path));
}

TEST_CASE("http server: a path that is not a socket is never replaced", "[http]") {
    TempDir dir;
    const std::string path = (dir.path / "not-a-socket").string();
    { UniqueFd f(::open(path.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644)); }
    net::io_context ioc;
    ServerOptions opts;
    opts.listen = {unix_address(path)};
    auto server = Server::create(ioc, opts, echo);
    REQUIRE_FALSE(server.ok());
    CHECK(server.error().code() == EEXIST);
    CHECK_THAT(server.error().message(), Catch::StartsWith("listen unix:" + path));
    CHECK(std::filesystem::is_regular_file(path));
}

TEST_CASE("http server: bind errors name the address; nothing half-made stays", "[http]") {
    TestServer ts({}, echo);
    TempDir dir;
    const std::string path = (dir.path / "x.sock").string();
    net::io_context ioc;
    ServerOptions opts;
    ListenAddress taken = loopback_any_port();
    taken.port = ts.port();
    opts.listen = {unix_address(path), taken};
    auto server = Server::create(ioc, opts, echo);
    REQUIRE_FALSE(server.ok());
    CHECK(server.error().code() == EADDRINUSE);
    CHECK(server.error().message() ==
          "listen 127.0.0.1:" + std::to_string(ts.port()) + ": address already in use");
    // The unix listener opened before the failure is gone again, file and all.
    CHECK_FALSE(std::filesystem::exists(path));

    ServerOptions none;
    CHECK_FALSE(Server::create(ioc, none, echo).ok());
}

// ---------------------------------------------------------------------------------------------
// Where unix sockets are made: checked directory, no symlinks, only a dead socket replaced.

TEST_CASE("http server: the socket directory is created 0750 and the socket 0600", "[http]") {
    TempDir dir;
    const auto sub = dir.path / "run-wrenn";
    const std::string path = (sub / "agent.sock").string();
    ServerOptions opts;
    opts.listen = {unix_address(path)};
    opts.unix_socket_group = "no-such-group-wrenn-test";
    const mode_t old_umask = ::umask(0);  // the modes must not depend on the umask
    {
        TestServer ts(opts, echo);
        ::umask(old_umask);
        struct stat st {};
        REQUIRE(::lstat(sub.c_str(), &st) == 0);
        CHECK(S_ISDIR(st.st_mode));
        CHECK((st.st_mode & 07777) == 0750);
        REQUIRE(::lstat(path.c_str(), &st) == 0);
        CHECK(S_ISSOCK(st.st_mode));
        CHECK((st.st_mode & 07777) == 0600);
        Client c(path);
        REQUIRE(c.send(get("/in-dir")));
        CHECK(c.read_response());
    }
    ::umask(old_umask);
    CHECK_FALSE(std::filesystem::exists(path));
    CHECK(std::filesystem::is_directory(sub));  // kept for the next start
}

TEST_CASE("http server: with an existing group the socket is 0660 and in that group", "[http]") {
    // The group this process runs as exists by definition, and chown to it needs no root.
    const group* g = ::getgrgid(::getegid());
    REQUIRE(g != nullptr);
    const std::string group_name = g->gr_name;
    CHECK(wrenn::http::find_group(group_name) == ::getegid());
    CHECK_FALSE(wrenn::http::find_group("no-such-group-wrenn-test"));
    TempDir dir;
    const auto sub = dir.path / "d";
    const std::string path = (sub / "agent.sock").string();
    ServerOptions opts;
    opts.listen = {unix_address(path)};
    opts.unix_socket_group = group_name;
    TestServer ts(opts, echo);
    struct stat st {};
    REQUIRE(::lstat(path.c_str(), &st) == 0);
    CHECK((st.st_mode & 07777) == 0660);
    CHECK(st.st_gid == ::getegid());
    REQUIRE(::lstat(sub.c_str(), &st) == 0);
    CHECK((st.st_mode & 07777) == 0750);
    CHECK(st.st_gid == ::getegid());
}

TEST_CASE("http server: no unix socket is made through a symlink or in an unsafe directory",
          "[http]") {
    TempDir dir;
    net::io_context ioc;
    auto try_listen = [&](const std::string& path) {
        ServerOptions opts;
        opts.listen = {unix_address(path)};
        return Server::create(ioc, opts, echo);
    };
    const auto target = dir.path / "target";
    std::filesystem::create_directory(target);

    SECTION("the directory is a symlink") {
        std::filesystem::create_directory_symlink(target, dir.path / "link");
        auto server = try_listen((dir.path / "link" / "agent.sock").string());
        REQUIRE_FALSE(server.ok());
        CHECK(server.error().code() == ELOOP);
        CHECK_THAT(server.error().message(), Catch::Contains("symbolic link"));
        CHECK(std::filesystem::is_empty(target));
    }
    SECTION("the directory is a dangling symlink") {
        std::filesystem::create_directory_symlink(dir.path / "nowhere", dir.path / "link");
        auto server = try_listen((dir.path / "link" / "agent.sock").string());
        REQUIRE_FALSE(server.ok());
        CHECK(server.error().code() == ELOOP);
        CHECK_FALSE(std::filesystem::exists(dir.path / "nowhere"));
    }
    SECTION("the directory is a file") {
        { UniqueFd f(::open((dir.path / "file").c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644)); }
        auto server = try_listen((dir.path / "file" / "agent.sock").string());
        REQUIRE_FALSE(server.ok());
        CHECK(server.error().code() == ENOTDIR);
        CHECK_THAT(server.error().message(), Catch::Contains("not a directory"));
        CHECK(std::filesystem::file_size(dir.path / "file") == 0);
    }
    SECTION("the directory is writable by others") {
        REQUIRE(::chmod(target.c_str(), 0777) == 0);
        auto server = try_listen((target / "agent.sock").string());
        REQUIRE_FALSE(server.ok());
        CHECK(server.error().code() == EPERM);
        CHECK_THAT(server.error().message(), Catch::Contains("writable by group or others"));
        // With the sticky bit (as /tmp) nobody else can remove or rename our socket.
        REQUIRE(::chmod(target.c_str(), 01777) == 0);
        CHECK(try_listen((target / "agent.sock").string()).ok());
    }
    SECTION("the directory belongs to another user") {
        if (::geteuid() != 0) {
            WARN(
                "needs root to make a directory another user owns; checked where tests run as "
                "root");
            return;
        }
        REQUIRE(::chown(target.c_str(), 4242, 4242) == 0);
        auto server = try_listen((target / "agent.sock").string());
        REQUIRE_FALSE(server.ok());
        CHECK(server.error().code() == EPERM);
        CHECK_THAT(server.error().message(), Catch::Contains("owned by uid 4242"));
    }
    SECTION("the socket path is a symlink, to a socket or to a file") {
        const auto victim = target / "victim";
        { UniqueFd f(::open(victim.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644)); }
        std::filesystem::create_symlink(victim, dir.path / "agent.sock");
        auto server = try_listen((dir.path / "agent.sock").string());
        REQUIRE_FALSE(server.ok());
        CHECK(server.error().code() == EEXIST);
        CHECK_THAT(server.error().message(), Catch::Contains("symbolic link"));
        CHECK(std::filesystem::is_symlink(dir.path / "agent.sock"));
        CHECK(std::filesystem::is_regular_file(victim));
    }
    SECTION("the socket path is a directory") {
        std::filesystem::create_directory(dir.path / "agent.sock");
        auto server = try_listen((dir.path / "agent.sock").string());
        REQUIRE_FALSE(server.ok());
        CHECK(server.error().code() == EEXIST);
        CHECK(std::filesystem::is_directory(dir.path / "agent.sock"));
    }
    SECTION("the directory's parent is missing: one level only is created") {
        auto server = try_listen((dir.path / "a" / "b" / "agent.sock").string());
        REQUIRE_FALSE(server.ok());
        CHECK(server.error().code() == ENOENT);
        CHECK_FALSE(std::filesystem::exists(dir.path / "a"));
    }
}

TEST_CASE("http server: the socket directory check, directly", "[http]") {
    TempDir dir;
    auto opened = wrenn::http::open_socket_dir((dir.path / "s.sock").string(), "");
    REQUIRE(opened.ok());
    CHECK(opened->name == "s.sock");
    CHECK(opened->dir_path == dir.path.string());
    CHECK(opened->socket_mode() == 0600);
    CHECK_THAT(opened->bind_path(), Catch::StartsWith("/proc/self/fd/"));
    CHECK_FALSE(wrenn::http::open_socket_dir("relative.sock", "").ok());
    CHECK_FALSE(wrenn::http::open_socket_dir((dir.path / "").string(), "").ok());
    CHECK_FALSE(wrenn::http::open_socket_dir((dir.path / "..").string(), "").ok());
}
