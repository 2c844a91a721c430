#include "http/core/listen_address.hpp"

#include <sys/un.h>

#include <boost/asio/ip/address.hpp>
#include <cerrno>
#include <charconv>

namespace wrenn::http {

namespace {

Error invalid(std::string_view text, std::string detail) {
    return Error("parse listen address \"" + std::string(text) + "\"", EINVAL, std::move(detail));
}

Result<std::uint16_t> parse_port(std::string_view text, std::string_view port) {
    if (port.empty()) {
        return invalid(text, "missing port after ':'");
    }
    unsigned value = 0;
    auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
    if (ec != std::errc() || end != port.data() + port.size()) {
        return invalid(text, "port \"" + std::string(port) + "\" is not a number");
    }
    if (value > 65535) {
        return invalid(text, "port " + std::string(port) + " is out of range 0-65535");
    }
    return static_cast<std::uint16_t>(value);
}

}  // namespace

bool ListenAddress::is_loopback() const {
    if (kind == Kind::Unix) {
        return true;
    }
    if (host == "localhost") {
        return true;
    }
    boost::system::error_code ec;
    auto address = boost::asio::ip::make_address(host, ec);
    if (ec) {
        return false;
    }
    if (address.is_v6() && address.to_v6().is_v4_mapped()) {
        return boost::asio::ip::make_address_v4(boost::asio::ip::v4_mapped, address.to_v6())
            .is_loopback();
    }
    return address.is_loopback();
}

std::string ListenAddress::to_string() const {
    if (kind == Kind::Unix) {
        return "unix:" + path;
    }
    const bool v6 = host.find(':') != std::string::npos;
    return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

Result<ListenAddress> parse_listen_address(std::string_view text) {
    ListenAddress out;
    if (text.empty()) {
        return invalid(text, "empty; expected HOST:PORT, [IPV6]:PORT or unix:/path");
    }
    if (text.starts_with("unix:")) {
        out.kind = ListenAddress::Kind::Unix;
        out.path = std::string(text.substr(5));
        if (out.path.empty() || out.path.front() != '/') {
            return invalid(text, "a unix socket path must be absolute");
        }
        // The kernel keeps at most sizeof sun_path bytes, including the terminating NUL.
        if (out.path.size() >= sizeof(sockaddr_un{}.sun_path)) {
            return invalid(text, "unix socket path is longer than " +
                                     std::to_string(sizeof(sockaddr_un{}.sun_path) - 1) + " bytes");
        }
        if (out.path.find('\0') != std::string::npos) {
            return invalid(text, "unix socket path contains a NUL byte");
        }
        return out;
    }

    std::string_view host;
    std::string_view port;
    if (text.front() == '[') {
        const auto close = text.find(']');
        if (close == std::string_view::npos) {
            return invalid(text, "missing ']' after IPv6 address");
        }
        host = text.substr(1, close - 1);
        const auto rest = text.substr(close + 1);
        if (rest.empty() || rest.front() != ':') {
            return invalid(text, "expected ':PORT' after ']'");
        }
        port = rest.substr(1);
        boost::system::error_code ec;
        boost::asio::ip::make_address_v6(std::string(host), ec);
        if (ec || host.find('%') != std::string_view::npos) {
            return invalid(text, "\"" + std::string(host) + "\" is not an IPv6 address");
        }
    } else {
        const auto colon = text.rfind(':');
        if (colon == std::string_view::npos) {
            return invalid(text, "missing ':PORT'");
        }
        host = text.substr(0, colon);
        port = text.substr(colon + 1);
        if (host.find(':') != std::string_view::npos) {
            return invalid(text, "an IPv6 address needs brackets, as in [::1]:7070");
        }
        if (host.empty()) {
            return invalid(text, "missing host before ':' (use 0.0.0.0 for every interface)");
        }
        if (host != "localhost") {
            boost::system::error_code ec;
            boost::asio::ip::make_address_v4(std::string(host), ec);
            if (ec) {
                return invalid(text, "host \"" + std::string(host) +
                                         "\" is not an IP address or \"localhost\"");
            }
        }
    }
    auto parsed_port = parse_port(text, port);
    if (!parsed_port) {
        return std::move(parsed_port).error();
    }
    out.host = std::string(host);
    out.port = *parsed_port;
    return out;
}

bool host_header_allowed(std::string_view host, const ListenAddress& listener) {
    std::string_view name = host;
    std::string_view port;
    if (name.starts_with('[')) {
        const auto close = name.find(']');
        if (close == std::string_view::npos) {
            return false;
        }
        port = name.substr(close + 1);
        name = name.substr(1, close - 1);
        if (!port.empty() && port.front() != ':') {
            return false;
        }
        boost::system::error_code ec;
        boost::asio::ip::make_address_v6(std::string(name), ec);
        if (ec) {
            return false;
        }
    } else {
        const auto colon = name.find(':');
        if (colon != std::string_view::npos) {
            port = name.substr(colon);
            name = name.substr(0, colon);
        }
    }
    if (!port.empty()) {
        port.remove_prefix(1);  // the ':'
        if (port.empty() || port.size() > 5 ||
            port.find_first_not_of("0123456789") != std::string_view::npos ||
            std::stoul(std::string(port)) > 65535) {
            return false;
        }
    }
    if (name.empty()) {
        return false;
    }
    std::string lower(name);
    for (auto& c : lower) {
        c = static_cast<char>(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
    }
    if (lower == "localhost") {
        return true;
    }
    boost::system::error_code ec;
    const auto address = boost::asio::ip::make_address(lower, ec);
    if (ec || lower.find('%') != std::string::npos) {
        return false;  // a host name, or an IPv6 zone that only confuses matters
    }
    ListenAddress as_listen;
    as_listen.host = lower;
    if (as_listen.is_loopback()) {
        return true;
    }
    if (listener.kind != ListenAddress::Kind::Tcp) {
        return false;
    }
    const auto own = boost::asio::ip::make_address(listener.host, ec);
    if (ec) {
        return false;
    }
    return own.is_unspecified() || own == address;
}

}  // namespace wrenn::http
