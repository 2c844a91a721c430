// The request target's parts the API routes by (http/url.hpp).
#include <catch2/catch.hpp>
#include <string_view>
#include <vector>

#include "http/core/url.hpp"

using wrenn::http::printable_path;
using wrenn::http::query_param;
using wrenn::http::split_path;
using wrenn::http::strip_query;
using Parts = std::vector<std::string_view>;

TEST_CASE("strip_query: the path of origin-form and absolute-form targets", "[http]") {
    CHECK(strip_query("/sandboxes") == "/sandboxes");
    CHECK(strip_query("/sandboxes?id=sb1&x=y") == "/sandboxes");
    CHECK(strip_query("/?x") == "/");
    CHECK(strip_query("") == "");
    CHECK(strip_query("?x=1") == "");
    // RFC 9112 3.2.2: a server accepts the absolute form and routes it by its path.
    CHECK(strip_query("http://localhost/healthz") == "/healthz");
    CHECK(strip_query("http://localhost:7070/sandboxes/sb1?compress=0") == "/sandboxes/sb1");
    CHECK(strip_query("http://localhost") == "/");
    CHECK(strip_query("http://localhost?x=1") == "");
    // An origin-form path holding "://" is a path, not a URL.
    CHECK(strip_query("/a://b/c") == "/a://b/c");
    CHECK(strip_query("nothing") == "nothing");
}

TEST_CASE("printable_path: bytes outside printable ASCII are percent-encoded", "[http]") {
    CHECK(printable_path("/sandboxes/sb1?x=\xff") == "/sandboxes/sb1");
    CHECK(printable_path("/a\x80\xff/\x01\x7f b") == "/a%80%FF/%01%7F b");
    CHECK(printable_path("/%41") == "/%41");  // already encoded text is left as it is
    CHECK(printable_path("http://host/\xe9t\xe9") == "/%E9t%E9");
    CHECK(printable_path("") == "");
}

TEST_CASE("split_path: a path's segments, empty ones dropped", "[http]") {
    CHECK(split_path("/sandboxes/sb1/pause") == Parts{"sandboxes", "sb1", "pause"});
    CHECK(split_path("//sandboxes///sb1/") == Parts{"sandboxes", "sb1"});
    CHECK(split_path("sandboxes") == Parts{"sandboxes"});
    CHECK(split_path("/").empty());
    CHECK(split_path("").empty());
    CHECK(split_path("///").empty());
    CHECK(split_path("/a/./..") == Parts{"a", ".", ".."});  // no dot-segment removal
}

TEST_CASE("query_param: a key's value in the target's query", "[http]") {
    CHECK(query_param("/sandboxes/import?id=sb1", "id") == "sb1");
    CHECK(query_param("/x?a=1&id=sb2&b=2", "id") == "sb2");
    CHECK(query_param("/x?id=first&id=second", "id") == "first");
    CHECK(query_param("/x?id=", "id") == "");
    CHECK(query_param("/x?id", "id") == "");  // a key without "=" has an empty value
    CHECK(query_param("/x?id&compress=0", "compress") == "0");
    CHECK(query_param("/x?a=b=c", "a") == "b=c");
    CHECK(query_param("/x?id=a%20b", "id") == "a%20b");  // taken as it is, not decoded
    CHECK_FALSE(query_param("/x", "id"));
    CHECK_FALSE(query_param("/x?", "id"));
    CHECK_FALSE(query_param("/x?identity=1&xid=2", "id"));
    CHECK_FALSE(query_param("/x?a=1&&b=2", "id"));
    CHECK_FALSE(query_param("/x?a=1&", "id"));
    CHECK(query_param("/x?a=1&&id=3", "id") == "3");
}
