#pragma once

#include <boost/json/object.hpp>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>

#include "agent/table/failure.hpp"
#include "common/result.hpp"

namespace wrenn::agent {

// 400 invalid_request with `message` as it is.
Failure invalid_request(std::string message);

// A request's body as a JSON object whose fields are all in `known`; an unknown field is refused
// by name. An empty body counts as {} where `allow_empty` (operations whose fields are all
// optional), else it is refused.
Result<boost::json::object, Failure> parse_json_body(std::string_view body,
                                                     std::initializer_list<std::string_view> known,
                                                     bool allow_empty);

// An optional string field (absent or null: nullopt). A field there but not a string sets
// `problem`, replacing what an earlier call set: read every field, then check `problem` once.
std::optional<std::string> string_field(const boost::json::object& object, std::string_view key,
                                        std::optional<std::string>& problem);

// A body whose one field is the optional string `key` ({"id": "sb2"}): its value, nullopt when
// it is absent or null; refused as parse_json_body refuses, or when the field is not a string.
Result<std::optional<std::string>, Failure> parse_one_string_field(std::string_view body,
                                                                   std::string_view key,
                                                                   bool allow_empty);

}  // namespace wrenn::agent
