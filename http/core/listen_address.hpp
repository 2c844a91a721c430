#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/result.hpp"

namespace wrenn::http {

// Where the HTTP server listens: a TCP host and port, or a unix socket path.
struct ListenAddress {
    enum class Kind { Tcp, Unix } kind = Kind::Tcp;
    std::string host;  // Tcp: an IPv4/IPv6 literal (no brackets) or "localhost"
    std::uint16_t port = 0;
    std::string path;  // Unix: absolute path of the socket file

    // 127.0.0.0/8, ::1 (also as ::ffff:127.x.y.z), "localhost"; unix sockets count as local.
    bool is_loopback() const;
    // "127.0.0.1:7070", "[::1]:7070", "unix:/run/wrenn.sock": the form parse_listen_address reads.
    std::string to_string() const;

    friend bool operator==(const ListenAddress&, const ListenAddress&) = default;
};

// Reads "HOST:PORT", "[IPV6]:PORT" or "unix:/path". HOST is an IP literal or "localhost"; other
// names are refused because resolving them would block and could change under us.
Result<ListenAddress> parse_listen_address(std::string_view text);

// Whether a request's Host header ("127.0.0.1:7070", "[::1]", "localhost") names a loopback
// address or the TCP listener's own address, with or without a port; for a wildcard listener
// (0.0.0.0, ::) any IP literal. A host name other than localhost is refused: that is what a
// DNS-rebinding page in a browser sends.
bool host_header_allowed(std::string_view host, const ListenAddress& listener);

}  // namespace wrenn::http
