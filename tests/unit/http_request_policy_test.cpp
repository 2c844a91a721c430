// The request policy's pure functions, called directly: no server, no sockets.
#include <boost/asio/error.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/field.hpp>
#include <catch2/catch.hpp>
#include <optional>
#include <string>

#include "common/digest.hpp"
#include "http/core/message.hpp"
#include "http/policy/request_policy.hpp"

namespace bhttp = boost::beast::http;
using wrenn::http::ListenAddress;
using wrenn::http::ReadFailure;
using wrenn::http::RequestHeader;

namespace {

RequestHeader header(bhttp::verb method, std::string_view target,
                     std::initializer_list<std::pair<bhttp::field, std::string_view>> fields = {},
                     unsigned version = 11) {
    RequestHeader h;
    h.method(method);
    h.target(target);
    h.version(version);
    for (const auto& [name, value] : fields) {
        h.set(name, value);
    }
    return h;
}

ListenAddress tcp_listener() {
    ListenAddress a;
    a.host = "127.0.0.1";
    a.port = 7070;
    return a;
}

const std::optional<std::string> kNoToken;
const std::optional<std::string> kToken = std::string("s3cret");

}  // namespace

TEST_CASE("request policy: iequals_ascii and same_secret", "[http][policy]") {
    CHECK(wrenn::http::iequals_ascii("Bearer ", "bEARER "));
    CHECK_FALSE(wrenn::http::iequals_ascii("Bearer", "Bearer "));
    CHECK_FALSE(wrenn::http::iequals_ascii("abc", "abd"));
    CHECK(wrenn::same_secret("s3cret", "s3cret"));
    CHECK_FALSE(wrenn::same_secret("s3cre", "s3cret"));
    CHECK_FALSE(wrenn::same_secret("s3cret!", "s3cret"));
    CHECK_FALSE(wrenn::same_secret("S3cret", "s3cret"));
    CHECK_FALSE(wrenn::same_secret("", "s3cret"));
    CHECK(wrenn::same_secret("", ""));
}

TEST_CASE("request policy: expects_continue", "[http][policy]") {
    using wrenn::http::expects_continue;
    CHECK(expects_continue(
        header(bhttp::verb::post, "/x", {{bhttp::field::expect, "100-continue"}})));
    CHECK(expects_continue(
        header(bhttp::verb::post, "/x", {{bhttp::field::expect, "100-Continue"}})));
    CHECK_FALSE(expects_continue(header(bhttp::verb::post, "/x")));
    CHECK_FALSE(
        expects_continue(header(bhttp::verb::post, "/x", {{bhttp::field::expect, "200-ok"}})));
    // HTTP/1.0 has no 100 Continue.
    CHECK_FALSE(expects_continue(
        header(bhttp::verb::post, "/x", {{bhttp::field::expect, "100-continue"}}, 10)));
}

TEST_CASE("request policy: authorized", "[http][policy]") {
    using wrenn::http::authorized;
    const auto auth = [](std::string_view value) {
        return header(bhttp::verb::post, "/sandboxes", {{bhttp::field::authorization, value}});
    };
    CHECK(authorized(kNoToken, header(bhttp::verb::post, "/sandboxes")));
    CHECK(authorized(kToken, auth("Bearer s3cret")));
    CHECK(authorized(kToken, auth("bearer   s3cret")));
    CHECK_FALSE(authorized(kToken, auth("Bearer s3cre")));
    CHECK_FALSE(authorized(kToken, auth("Basic s3cret")));
    CHECK_FALSE(authorized(kToken, auth("Bearer")));
    CHECK_FALSE(authorized(kToken, header(bhttp::verb::post, "/sandboxes")));
    // Health checks pass without it; nothing else does, not even another method on /healthz.
    CHECK(authorized(kToken, header(bhttp::verb::get, "/healthz")));
    CHECK(authorized(kToken, header(bhttp::verb::get, "/healthz?verbose=1")));
    // The absolute form names the same route, as the API routes it.
    CHECK(authorized(kToken, header(bhttp::verb::get, "http://localhost/healthz")));
    CHECK_FALSE(authorized(kToken, header(bhttp::verb::post, "/healthz")));
    CHECK_FALSE(authorized(kToken, header(bhttp::verb::get, "/healthz/x")));
}

TEST_CASE("request policy: is_media_type", "[http][policy]") {
    using wrenn::http::is_media_type;
    CHECK(is_media_type("application/json", "application/json"));
    CHECK(is_media_type("Application/JSON; charset=utf-8", "application/json"));
    CHECK(is_media_type(" \tapplication/json \t;x", "application/json"));
    CHECK_FALSE(is_media_type("application/json-seq", "application/json"));
    CHECK_FALSE(is_media_type("text/plain", "application/json"));
    CHECK_FALSE(is_media_type("", "application/json"));
}

TEST_CASE("request policy: printable percent-encodes and cuts", "[http][policy]") {
    using wrenn::http::printable;
    CHECK(printable("plain text") == "plain text");
    CHECK(printable("a\"b") == "a%22b");
    CHECK(printable("\xff\x01\x7f") == "%FF%01%7F");
    CHECK(printable(std::string(100, 'x')) == std::string(100, 'x'));
    CHECK(printable(std::string(101, 'x')) == std::string(100, 'x') + "...");
}

TEST_CASE("request policy: announces_body", "[http][policy]") {
    using wrenn::http::announces_body;
    CHECK(announces_body(true, 0));
    CHECK(announces_body(false, 1));
    CHECK_FALSE(announces_body(false, 0));
}

TEST_CASE("request policy: refusal, rule by rule and in order", "[http][policy]") {
    using wrenn::http::refusal;
    const std::optional<ListenAddress> tcp = tcp_listener();
    const std::optional<ListenAddress> unix_socket;
    const auto host = [](std::string_view value) {
        return header(bhttp::verb::get, "/x", {{bhttp::field::host, value}});
    };

    SECTION("an Origin header, before anything else") {
        auto r = refusal(kToken, tcp,
                         header(bhttp::verb::post, "/x",
                                {{bhttp::field::origin, "https://evil.example"},
                                 {bhttp::field::content_type, "text/plain"}}),
                         true);
        REQUIRE(r);
        CHECK(r->status == bhttp::status::forbidden);
        CHECK(r->code == "origin_refused");
    }
    SECTION("the Host on a TCP listener without a token") {
        CHECK_FALSE(refusal(kNoToken, tcp, host("127.0.0.1:7070"), false));
        CHECK_FALSE(refusal(kNoToken, tcp, host("localhost"), false));
        auto evil = refusal(kNoToken, tcp, host("evil.example\xff"), false);
        REQUIRE(evil);
        CHECK(evil->status == bhttp::status::forbidden);
        CHECK(evil->code == "host_refused");
        CHECK_THAT(evil->message, Catch::StartsWith("Host \"evil.example%FF\" is refused") &&
                                      Catch::Contains("127.0.0.1:7070"));
        auto none = refusal(kNoToken, tcp, header(bhttp::verb::get, "/x"), false);
        REQUIRE(none);
        CHECK_THAT(none->message, Catch::StartsWith("a request without a Host header"));
        // HTTP/1.0 may leave it out; a token, or a unix socket, makes any Host fine.
        CHECK_FALSE(refusal(kNoToken, tcp, header(bhttp::verb::get, "/x", {}, 10), false));
        CHECK_FALSE(refusal(kNoToken, unix_socket, host("evil.example"), false));
        auto with_token = host("evil.example");
        with_token.set(bhttp::field::authorization, "Bearer s3cret");
        CHECK_FALSE(refusal(kToken, tcp, with_token, false));
    }
    SECTION("the bearer token") {
        auto r = refusal(kToken, unix_socket, header(bhttp::verb::post, "/x"), false);
        REQUIRE(r);
        CHECK(r->status == bhttp::status::unauthorized);
        CHECK(r->code == "unauthorized");
    }
    SECTION("JSON for a body or any Content-Type") {
        const auto typed = [](std::string_view type) {
            return header(bhttp::verb::post, "/x", {{bhttp::field::content_type, type}});
        };
        CHECK_FALSE(refusal(kNoToken, unix_socket, typed("application/json"), true));
        CHECK_FALSE(refusal(kNoToken, unix_socket, header(bhttp::verb::post, "/x"), false));
        auto text = refusal(kNoToken, unix_socket, typed("text/plain"), false);
        REQUIRE(text);
        CHECK(text->status == bhttp::status::unsupported_media_type);
        CHECK_THAT(text->message, Catch::EndsWith("got \"text/plain\""));
        auto untyped = refusal(kNoToken, unix_socket, header(bhttp::verb::post, "/x"), true);
        REQUIRE(untyped);
        CHECK_THAT(untyped->message, Catch::EndsWith("got no Content-Type"));
    }
    SECTION("a streamed request takes its own media type instead") {
        const wrenn::http::StreamedBody streamed{"application/vnd.test", 100};
        const auto typed = [](std::string_view type) {
            return header(bhttp::verb::post, "/x", {{bhttp::field::content_type, type}});
        };
        CHECK_FALSE(
            refusal(kNoToken, unix_socket, typed("Application/Vnd.Test; v=1"), true, &streamed));
        auto json = refusal(kNoToken, unix_socket, typed("application/json"), true, &streamed);
        REQUIRE(json);
        CHECK(json->status == bhttp::status::unsupported_media_type);
        CHECK_THAT(json->message, Catch::Contains("application/vnd.test"));
        CHECK(refusal(kNoToken, unix_socket, header(bhttp::verb::post, "/x"), false, &streamed));
    }
}

TEST_CASE("request policy: refusal_response", "[http][policy]") {
    const auto req = header(bhttp::verb::post, "/x", {}, 10);
    const wrenn::http::Refusal unauthorized{bhttp::status::unauthorized, "unauthorized", "no"};
    auto res = wrenn::http::refusal_response(req, unauthorized, false);
    CHECK(res.result() == bhttp::status::unauthorized);
    CHECK(res.version() == 10);
    CHECK(res[bhttp::field::www_authenticate] == "Bearer");
    CHECK(res.body() == "{\"error\":{\"code\":\"unauthorized\",\"message\":\"no\"}}");
    CHECK_FALSE(res.keep_alive());
    const wrenn::http::Refusal forbidden{bhttp::status::forbidden, "origin_refused", "no"};
    auto other = wrenn::http::refusal_response(req, forbidden, true);
    CHECK(other[bhttp::field::www_authenticate].empty());
}

TEST_CASE("request policy: classify_read_failure", "[http][policy]") {
    using wrenn::http::classify_read_failure;
    CHECK(classify_read_failure(bhttp::error::end_of_stream) == ReadFailure::ClientClosed);
    CHECK(classify_read_failure(boost::beast::error::timeout) == ReadFailure::TimedOut);
    CHECK(classify_read_failure(bhttp::error::body_limit) == ReadFailure::BodyTooLarge);
    CHECK(classify_read_failure(bhttp::error::header_limit) == ReadFailure::HeaderTooLarge);
    CHECK(classify_read_failure(bhttp::error::buffer_overflow) == ReadFailure::HeaderTooLarge);
    CHECK(classify_read_failure(bhttp::error::bad_method) == ReadFailure::Malformed);
    CHECK(classify_read_failure(bhttp::error::bad_chunk) == ReadFailure::Malformed);
    CHECK(classify_read_failure(bhttp::error::partial_message) == ReadFailure::Gone);
    CHECK(classify_read_failure(boost::asio::error::connection_reset) == ReadFailure::Gone);
}

TEST_CASE("http server: error_response is JSON with escaped text", "[http]") {
    auto res = wrenn::http::error_response(11, bhttp::status::not_found, "not_found",
                                           "no \"sb1\"\n\\ here\x01", true);
    CHECK(res.result() == bhttp::status::not_found);
    CHECK(res[bhttp::field::content_type] == "application/json");
    CHECK(res.body() ==
          "{\"error\":{\"code\":\"not_found\",\"message\":\"no \\\"sb1\\\"\\n\\\\ here\\u0001\"}}");
    CHECK(res.keep_alive());
    CHECK(res[bhttp::field::content_length] == std::to_string(res.body().size()));
    auto closing = wrenn::http::error_response(10, bhttp::status::bad_request, "x", "y", false);
    CHECK_FALSE(closing.keep_alive());
}

TEST_CASE("request policy: framing_refusal", "[http][policy]") {
    using wrenn::http::framing_refusal;
    const auto te = [](std::string_view value) {
        return header(bhttp::verb::post, "/x", {{bhttp::field::transfer_encoding, value}});
    };
    CHECK_FALSE(framing_refusal(header(bhttp::verb::post, "/x"), false));
    CHECK_FALSE(framing_refusal(te("chunked"), true));
    CHECK_FALSE(framing_refusal(te("gzip, chunked"), true));
    const auto refused = framing_refusal(te("gzip"), false);
    REQUIRE(refused);
    CHECK(refused->status == bhttp::status::bad_request);
    CHECK(refused->code == "bad_transfer_encoding");
    CHECK(refused->message.find("\"gzip\"") != std::string::npos);
    // Bytes that are not ASCII come back percent-encoded, so the JSON body stays valid.
    const auto odd = framing_refusal(te("\xff\n"), false);
    REQUIRE(odd);
    CHECK(odd->message.find('\xff') == std::string::npos);
}
