#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

// A request target's parts, for routing: pure functions over the target as Beast gives it.
namespace wrenn::http {

// The path of a request target, without its query. An absolute-form target
// ("http://host/path"), which RFC 9112 section 3.2.2 says a server must accept, is routed by its
// path ("/" when it has none).
std::string_view strip_query(std::string_view target);

// The target's path for an error message. Beast lets bytes 0x80-0xFF through (obs-text), and
// echoing them raw would make a JSON body invalid UTF-8, so they (and control characters) are
// percent-encoded.
std::string printable_path(std::string_view target);

// A path's segments: "/sandboxes//sb1/" -> {"sandboxes", "sb1"}. Empty segments are dropped.
std::vector<std::string_view> split_path(std::string_view path);

// The value of `key` in the target's query ("?id=sb1&x=y"); "" for a key without "=", nullopt
// when absent. Values are taken as they are: the ones the API reads (ids, true/false) need no
// percent-decoding.
std::optional<std::string_view> query_param(std::string_view target, std::string_view key);

}  // namespace wrenn::http
