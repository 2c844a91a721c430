#include <catch2/catch.hpp>
#include <cerrno>

#include "http/core/listen_address.hpp"

using wrenn::http::ListenAddress;
using wrenn::http::parse_listen_address;

TEST_CASE("listen address: TCP host and port", "[http]") {
    auto a = parse_listen_address("127.0.0.1:7070");
    REQUIRE(a.ok());
    CHECK(a->kind == ListenAddress::Kind::Tcp);
    CHECK(a->host == "127.0.0.1");
    CHECK(a->port == 7070);
    CHECK(a->to_string() == "127.0.0.1:7070");
    CHECK(a->is_loopback());

    auto any = parse_listen_address("0.0.0.0:0");
    REQUIRE(any.ok());
    CHECK(any->port == 0);
    CHECK_FALSE(any->is_loopback());

    auto local = parse_listen_address("localhost:65535");
    REQUIRE(local.ok());
    CHECK(local->host == "localhost");
    CHECK(local->port == 65535);
    CHECK(local->is_loopback());

    CHECK(parse_listen_address("127.8.9.10:1")->is_loopback());
    CHECK_FALSE(parse_listen_address("10.0.0.1:80")->is_loopback());
    CHECK_FALSE(parse_listen_address("128.0.0.1:80")->is_loopback());
}

TEST_CASE("listen address: IPv6 literals in brackets", "[http]") {
    auto a = parse_listen_address("[::1]:8080");
    REQUIRE(a.ok());
    CHECK(a->host == "::1");
    CHECK(a->port == 8080);
    CHECK(a->to_string() == "[::1]:8080");
    CHECK(a->is_loopback());

    auto any = parse_listen_address("[::]:80");
    REQUIRE(any.ok());
    CHECK_FALSE(any->is_loopback());
    CHECK(parse_listen_address("[::ffff:127.0.0.1]:80")->is_loopback());
    CHECK_FALSE(parse_listen_address("[fe80::1]:80")->is_loopback());
    CHECK(parse_listen_address("[2001:db8::5]:443")->to_string() == "[2001:db8::5]:443");
}

TEST_CASE("listen address: unix sockets", "[http]") {
    auto a = parse_listen_address("unix:/run/wrenn/agent.sock");
    REQUIRE(a.ok());
    CHECK(a->kind == ListenAddress::Kind::Unix);
    CHECK(a->path == "/run/wrenn/agent.sock");
    CHECK(a->to_string() == "unix:/run/wrenn/agent.sock");
    CHECK(a->is_loopback());
}

TEST_CASE("listen address: invalid forms are refused with a reason", "[http]") {
    struct Case {
        const char* text;
        const char* reason;
    };
    const Case cases[] = {
        {"", "empty"},
        {"127.0.0.1", "missing ':PORT'"},
        {"127.0.0.1:", "missing port"},
        {":7070", "missing host"},
        {"127.0.0.1:70000", "out of range"},
        {"127.0.0.1:-1", "not a number"},
        {"127.0.0.1:80x", "not a number"},
        {"127.0.0.1: 80", "not a number"},
        {"example.com:80", "not an IP address"},
        {"300.1.1.1:80", "not an IP address"},
        {"::1:7070", "needs brackets"},
        {"[::1]7070", "expected ':PORT'"},
        {"[::1:7070", "missing ']'"},
        {"[127.0.0.1]:80", "not an IPv6 address"},
        {"[fe80::1%eth0]:80", "not an IPv6 address"},
        {"[]:80", "not an IPv6 address"},
        {"unix:", "absolute"},
        {"unix:relative.sock", "absolute"},
        {"unix:/"
         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
         "aaaaaaaaaaaaaaaaaaaaaaaaa.sock",
         "longer than 107 bytes"},
    };
    for (const auto& c : cases) {
        INFO("input: \"" << c.text << "\"");
        auto parsed = parse_listen_address(c.text);
        REQUIRE_FALSE(parsed.ok());
        CHECK(parsed.error().code() == EINVAL);
        CHECK_THAT(parsed.error().message(), Catch::Contains(c.reason));
        CHECK_THAT(parsed.error().message(), Catch::StartsWith("parse listen address"));
    }
}

TEST_CASE("listen address: to_string reads back to the same address", "[http]") {
    for (const char* text :
         {"127.0.0.1:1", "[::1]:2", "localhost:3", "unix:/tmp/x.sock", "[2001:db8::1]:0"}) {
        auto parsed = parse_listen_address(text);
        REQUIRE(parsed.ok());
        CHECK(parsed->to_string() == text);
        auto again = parse_listen_address(parsed->to_string());
        REQUIRE(again.ok());
        CHECK(*again == *parsed);
    }
}

TEST_CASE("listen address: which Host headers a TCP listener without a token takes", "[http]") {
    using wrenn::http::host_header_allowed;
    const auto loopback = *parse_listen_address("127.0.0.1:7070");
    const auto guest = *parse_listen_address("10.0.2.15:7070");
    const auto any = *parse_listen_address("0.0.0.0:7070");
    for (const auto* host : {"127.0.0.1", "127.0.0.1:7070", "127.9.9.9:1", "localhost",
                             "LocalHost:7070", "[::1]", "[::1]:7070", "[::ffff:127.0.0.1]:80"}) {
        INFO(host);
        CHECK(host_header_allowed(host, loopback));
        CHECK(host_header_allowed(host, guest));
    }
    CHECK(host_header_allowed("10.0.2.15:7070", guest));
    CHECK(host_header_allowed("10.0.2.15", guest));
    CHECK_FALSE(host_header_allowed("10.0.2.15", loopback));
    CHECK(host_header_allowed("192.168.1.9:7070", any));
    CHECK(host_header_allowed("[fe80::1]:7070", any));
    for (const auto* host : {"", "evil.example", "evil.example:7070", "localhost.",
                             "localhost.evil", "127.0.0.1.nip.io", "127.0.0.1:", "127.0.0.1:70700",
                             "127.0.0.1:x", "[::1", "[::1]x", "::1", "[::1%lo]", ":7070"}) {
        INFO(host);
        CHECK_FALSE(host_header_allowed(host, guest));
        CHECK_FALSE(host_header_allowed(host, any));
    }
    // Another IP literal: not this listener's address; a wildcard listener takes any.
    CHECK_FALSE(host_header_allowed("10.0.2.16:7070", guest));
    CHECK(host_header_allowed("10.0.2.16:7070", any));
}
