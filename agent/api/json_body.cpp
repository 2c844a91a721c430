#include "agent/api/json_body.hpp"

#include <algorithm>
#include <boost/json/parse.hpp>

namespace wrenn::agent {

namespace json = boost::json;

Failure invalid_request(std::string message) {
    return failure(FailureKind::InvalidRequest, std::move(message));
}

Result<json::object, Failure> parse_json_body(std::string_view body,
                                              std::initializer_list<std::string_view> known,
                                              bool allow_empty) {
    if (body.empty()) {
        if (!allow_empty) {
            return invalid_request("the request needs a JSON object body");
        }
        return json::object();
    }
    boost::system::error_code ec;
    json::value value = json::parse(body, ec);
    if (ec) {
        return invalid_request("the body is not valid JSON: " + ec.message());
    }
    if (!value.is_object()) {
        return invalid_request("the body must be a JSON object");
    }
    for (const auto& field : value.as_object()) {
        if (std::find(known.begin(), known.end(), field.key()) == known.end()) {
            return invalid_request("unknown field '" + std::string(field.key()) + "'");
        }
    }
    return std::move(value.as_object());
}

std::optional<std::string> string_field(const json::object& object, std::string_view key,
                                        std::optional<std::string>& problem) {
    const auto* v = object.if_contains(key);
    if (v == nullptr || v->is_null()) {
        return std::nullopt;
    }
    if (!v->is_string()) {
        problem = "field '" + std::string(key) + "' must be a string";
        return std::nullopt;
    }
    return std::string(v->as_string());
}

Result<std::optional<std::string>, Failure> parse_one_string_field(std::string_view body,
                                                                   std::string_view key,
                                                                   bool allow_empty) {
    auto object = parse_json_body(body, {key}, allow_empty);
    if (!object) {
        return std::move(object).error();
    }
    std::optional<std::string> problem;
    auto value = string_field(*object, key, problem);
    if (problem) {
        return invalid_request(*problem);
    }
    return value;
}

}  // namespace wrenn::agent
