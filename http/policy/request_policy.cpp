#include "http/policy/request_policy.hpp"

#include <algorithm>
#include <boost/beast/core/error.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/field.hpp>

#include "common/digest.hpp"
#include "http/core/url.hpp"

namespace wrenn::http {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;

bool iequals_ascii(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return (x | 0x20) == (y | 0x20);
           });
}

bool expects_continue(const RequestHeader& req) {
    const auto it = req.find(bhttp::field::expect);
    return req.version() >= 11 && it != req.end() && iequals_ascii(it->value(), "100-continue");
}

bool authorized(const std::optional<std::string>& token, const RequestHeader& req) {
    if (!token) {
        return true;
    }
    if (req.method() == bhttp::verb::get && strip_query(req.target()) == "/healthz") {
        return true;
    }
    return carries_token(*token, req);
}

bool carries_token(const std::string& token, const RequestHeader& req) {
    const auto it = req.find(bhttp::field::authorization);
    if (it == req.end()) {
        return false;
    }
    std::string_view value = it->value();
    constexpr std::string_view scheme = "Bearer ";
    // RFC 9110 section 11.1: the auth scheme is case-insensitive.
    if (value.size() < scheme.size() || !iequals_ascii(value.substr(0, scheme.size()), scheme)) {
        return false;
    }
    value.remove_prefix(scheme.size());
    while (!value.empty() && value.front() == ' ') {
        value.remove_prefix(1);
    }
    return same_secret(value, token);
}

bool is_media_type(std::string_view value, std::string_view wanted) {
    std::string_view type = value.substr(0, value.find(';'));
    while (!type.empty() && (type.front() == ' ' || type.front() == '\t')) {
        type.remove_prefix(1);
    }
    while (!type.empty() && (type.back() == ' ' || type.back() == '\t')) {
        type.remove_suffix(1);
    }
    return iequals_ascii(type, wanted);
}

std::string printable(std::string_view value) {
    static constexpr char kHex[] = "0123456789ABCDEF";
    std::string out;
    for (const char c : value.substr(0, 100)) {
        const auto u = static_cast<unsigned char>(c);
        if (u >= 0x20 && u < 0x7f && c != '"') {
            out += c;
        } else {
            out += '%';
            out += kHex[u >> 4];
            out += kHex[u & 0xf];
        }
    }
    return value.size() > 100 ? out + "..." : out;
}

bool announces_body(bool chunked, std::uint64_t content_length) {
    return chunked || content_length > 0;
}

std::optional<Refusal> framing_refusal(const RequestHeader& req, bool chunked) {
    const auto it = req.find(bhttp::field::transfer_encoding);
    if (it == req.end() || chunked) {
        return std::nullopt;
    }
    return Refusal{bhttp::status::bad_request, "bad_transfer_encoding",
                   "Transfer-Encoding \"" + printable(it->value()) +
                       "\" does not end in \"chunked\", so the body has no length (RFC 9112 "
                       "section 6.3); send the body chunked or with a Content-Length"};
}

std::optional<Refusal> refusal(const std::optional<std::string>& bearer_token,
                               const std::optional<ListenAddress>& tcp_listener,
                               const RequestHeader& req, bool has_body,
                               const StreamedBody* streamed) {
    if (req.find(bhttp::field::origin) != req.end()) {
        return Refusal{bhttp::status::forbidden, "origin_refused",
                       "requests with an Origin header are refused: browsers send one, and no "
                       "web page may drive the agent; call the API from a program (curl, a "
                       "client library), which sends none"};
    }
    if (tcp_listener && !bearer_token) {
        const auto it = req.find(bhttp::field::host);
        // HTTP/1.0 may leave Host out, and no browser does: nothing to rebind then.
        const std::string_view host =
            it == req.end() ? std::string_view() : std::string_view(it->value());
        const bool bare_http10 = it == req.end() && req.version() < 11;
        if (!bare_http10 && !host_header_allowed(host, *tcp_listener)) {
            return Refusal{
                bhttp::status::forbidden, "host_refused",
                (it == req.end() ? std::string("a request without a Host header")
                                 : "Host \"" + printable(host) + "\"") +
                    " is refused: without a token this listener takes only a Host naming a "
                    "loopback address or " +
                    tcp_listener->to_string() + " (this stops DNS rebinding); use http://" +
                    tcp_listener->to_string() + "/ or run the agent with --token-file"};
        }
    }
    if (!authorized(bearer_token, req)) {
        return Refusal{bhttp::status::unauthorized, "unauthorized",
                       "missing or wrong bearer token"};
    }
    const auto type = req.find(bhttp::field::content_type);
    if (streamed != nullptr) {
        if (type == req.end() && streamed->untyped) {
            return std::nullopt;
        }
        const bool other =
            type != req.end() &&
            std::any_of(streamed->other_types.begin(), streamed->other_types.end(),
                        [&](const auto& t) { return is_media_type(type->value(), t); });
        if (type == req.end() || (!is_media_type(type->value(), streamed->media_type) && !other)) {
            std::string types = "\"Content-Type: " + streamed->media_type + "\"";
            for (const auto& t : streamed->other_types) {
                types += " or \"" + t + "\"";
            }
            return Refusal{bhttp::status::unsupported_media_type, "unsupported_media_type",
                           "this route takes a body sent with " + types + "; got " +
                               (type == req.end() ? std::string("no Content-Type")
                                                  : "\"" + printable(type->value()) + "\"")};
        }
        return std::nullopt;
    }
    if ((type != req.end() && !is_media_type(type->value(), "application/json")) ||
        (type == req.end() && has_body)) {
        return Refusal{bhttp::status::unsupported_media_type, "unsupported_media_type",
                       "a request body must be JSON sent with \"Content-Type: application/json\" "
                       "(curl: --json '{...}'); got " +
                           (type == req.end() ? std::string("no Content-Type")
                                              : "\"" + printable(type->value()) + "\"")};
    }
    return std::nullopt;
}

Response refusal_response(const RequestHeader& req, const Refusal& refused, bool keep_alive) {
    auto res =
        error_response(req.version(), refused.status, refused.code, refused.message, keep_alive);
    if (refused.status == bhttp::status::unauthorized) {
        res.set(bhttp::field::www_authenticate, "Bearer");
    }
    return res;
}

ReadFailure classify_read_failure(beast::error_code ec) {
    if (ec == bhttp::error::end_of_stream) {
        return ReadFailure::ClientClosed;
    }
    if (ec == beast::error::timeout) {
        return ReadFailure::TimedOut;
    }
    if (ec == bhttp::error::body_limit) {
        return ReadFailure::BodyTooLarge;
    }
    if (ec == bhttp::error::header_limit || ec == bhttp::error::buffer_overflow) {
        return ReadFailure::HeaderTooLarge;
    }
    if (ec.category() == bhttp::make_error_code(bhttp::error::bad_method).category() &&
        ec != bhttp::error::partial_message) {
        return ReadFailure::Malformed;
    }
    return ReadFailure::Gone;
}

}  // namespace wrenn::http
