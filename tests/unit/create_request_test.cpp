// parse_create_request (agent/api/create_request.hpp): the body of POST /sandboxes, every
// refusal with the message the API answers, and parse_json_body, which it reads the body with.
#include "agent/api/create_request.hpp"

#include <catch2/catch.hpp>
#include <string>

#include "agent/api/json_body.hpp"

using namespace wrenn::agent;

namespace {

// The message of the 400 a body gets; fails the test if the body is taken.
std::string refusal(std::string_view body) {
    auto parsed = parse_create_request(body);
    REQUIRE_FALSE(parsed.ok());
    CHECK(parsed.error().kind == FailureKind::InvalidRequest);
    CHECK(parsed.error().error.code() == 0);
    return parsed.error().error.message();
}

CreateRequest taken(std::string_view body) {
    auto parsed = parse_create_request(body);
    if (!parsed) {
        FAIL("refused: " << parsed.error().error.message());
    }
    return std::move(parsed).value();
}

constexpr std::string_view kNameMessage = "must match [A-Za-z0-9][A-Za-z0-9_-]{0,63}";

}  // namespace

TEST_CASE("parse_create_request: an id and a template", "[create_request]") {
    auto both = taken(R"({"id": "sb1", "template": "base"})");
    CHECK(both.id == "sb1");
    CHECK(both.template_name == "base");
    CHECK_FALSE(both.tcmu_origin);

    // No id (or a null one): the agent makes one.
    CHECK(taken(R"({"template": "base"})").id.empty());
    CHECK(taken(R"({"id": null, "template": "base"})").id.empty());
    // Names at the edges of the rule.
    CHECK(taken(R"({"id": "a", "template": "Z9_-"})").template_name == "Z9_-");
    const std::string longest(64, 'x');
    CHECK(taken(R"({"id": ")" + longest + R"(", "template": "base"})").id == longest);
    // A null origin is no origin.
    CHECK(taken(R"({"id": "sb1", "template": "base", "origin": null})").template_name == "base");
}

TEST_CASE("parse_create_request: ids and template names outside the rule", "[create_request]") {
    CHECK(refusal(R"({"id": "../../etc", "template": "base"})") ==
          "field 'id' " + std::string(kNameMessage));
    CHECK(refusal(R"({"id": "-a", "template": "base"})") ==
          "field 'id' " + std::string(kNameMessage));
    CHECK(refusal(R"({"id": ")" + std::string(65, 'x') + R"(", "template": "base"})") ==
          "field 'id' " + std::string(kNameMessage));
    const std::string template_rule = "field 'template' " + std::string(kNameMessage) +
                                      ", or be a template's digest (\"blocks-sha256-4k:<64 hex>\")";
    CHECK(refusal(R"({"id": "sb1", "template": "../base"})") == template_rule);
    CHECK(refusal(R"({"id": "sb1", "template": ""})") == template_rule);
    CHECK(refusal(R"({"id": "sb1", "template": "sha256:)" + std::string(64, 'a') + R"("})") ==
          template_rule);
    auto by_digest = wrenn::agent::parse_create_request(
        R"({"id": "sb1", "template": "blocks-sha256-4k:)" + std::string(64, 'a') + R"("})");
    REQUIRE(by_digest.ok());
    CHECK(by_digest->template_name == "blocks-sha256-4k:" + std::string(64, 'a'));
    CHECK(refusal(R"({"id": "sb1"})") ==
          "field 'template' is required (or 'origin' for a TCMU origin)");
    CHECK(refusal(R"({"id": "sb1", "template": null})") ==
          "field 'template' is required (or 'origin' for a TCMU origin)");
    CHECK(refusal("{}") == "field 'template' is required (or 'origin' for a TCMU origin)");
}

TEST_CASE("parse_create_request: an empty id is a mistake, not a wish for a generated one",
          "[create_request]") {
    const std::string message =
        "field 'id' is empty; leave it out to get a generated id, or give one that matches "
        "[A-Za-z0-9][A-Za-z0-9_-]{0,63}";
    CHECK(refusal(R"({"id": "", "template": "base"})") == message);
    // Before anything else about the body is looked at.
    CHECK(refusal(R"({"id": ""})") == message);
    CHECK(refusal(R"({"id": "", "origin": {"type": "tcmu"}})") == message);
}

TEST_CASE("parse_create_request: the body, unknown fields and wrong types", "[create_request]") {
    CHECK(refusal("") == "the request needs a JSON object body");
    CHECK_THAT(refusal(R"({"id":)"), Catch::StartsWith("the body is not valid JSON: "));
    CHECK_THAT(refusal("not json"), Catch::StartsWith("the body is not valid JSON: "));
    CHECK(refusal("[]") == "the body must be a JSON object");
    CHECK(refusal("null") == "the body must be a JSON object");
    CHECK(refusal(R"("sb1")") == "the body must be a JSON object");
    CHECK(refusal(R"({"id": "sb1", "template": "base", "size": 1})") == "unknown field 'size'");
    CHECK(refusal(R"({"ID": "sb1"})") == "unknown field 'ID'");
    CHECK(refusal(R"({"id": 7, "template": "base"})") == "field 'id' must be a string");
    CHECK(refusal(R"({"id": "sb1", "template": ["base"]})") == "field 'template' must be a string");
    CHECK(refusal(R"({"id": true, "template": "base"})") == "field 'id' must be a string");
}

TEST_CASE("parse_create_request: a TCMU origin", "[create_request]") {
    auto plain = taken(R"({"id": "t1", "origin": {"type": "tcmu", "config": "/etc/ob/c.json"}})");
    CHECK(plain.id == "t1");
    CHECK(plain.template_name.empty());
    REQUIRE(plain.tcmu_origin);
    CHECK(plain.tcmu_origin->type == OriginSpec::Type::Tcmu);
    CHECK(plain.tcmu_origin->path == "/etc/ob/c.json");
    CHECK(plain.tcmu_origin->handler == "overlaybd");  // the default
    CHECK_FALSE(plain.tcmu_origin->size_bytes);
    CHECK_FALSE(plain.tcmu_origin->identity);

    auto full = taken(
        R"({"origin": {"type": "tcmu", "config": "/c", "handler": "user_rbd", "size_bytes": 4096}})");
    CHECK(full.id.empty());
    REQUIRE(full.tcmu_origin);
    CHECK(full.tcmu_origin->handler == "user_rbd");
    CHECK(full.tcmu_origin->size_bytes == 4096u);
    // The largest size, 2^62 bytes.
    auto largest =
        taken(R"({"origin": {"type": "tcmu", "config": "/c", "size_bytes": 4611686018427387904}})");
    CHECK(largest.tcmu_origin->size_bytes == std::uint64_t{1} << 62);
    auto nulls = taken(
        R"({"origin": {"type": "tcmu", "config": "/c", "handler": null, "size_bytes": null}})");
    CHECK(nulls.tcmu_origin->handler == "overlaybd");
    CHECK_FALSE(nulls.tcmu_origin->size_bytes);
}

TEST_CASE("parse_create_request: every refusal of a TCMU origin", "[create_request]") {
    CHECK(refusal(R"({"template": "base", "origin": {"type": "tcmu", "config": "/c"}})") ==
          "give either 'template' or 'origin', not both");
    CHECK(refusal(R"({"origin": "tcmu"})") == "field 'origin' must be an object");
    CHECK(refusal(R"({"origin": ["tcmu"]})") == "field 'origin' must be an object");
    CHECK(refusal(R"({"origin": {"type": "tcmu", "config": "/c", "dev": 1}})") ==
          "unknown field 'origin.dev'");
    CHECK(refusal(R"({"origin": {"type": 1}})") == "field 'type' must be a string");
    CHECK(refusal(R"({"origin": {"type": "tcmu", "config": 1}})") ==
          "field 'config' must be a string");
    CHECK(refusal(R"({"origin": {"type": "tcmu", "config": "/c", "handler": 1}})") ==
          "field 'handler' must be a string");

    const std::string type =
        "field 'origin.type' must be \"tcmu\" (for a template, give 'template')";
    CHECK(refusal(R"({"origin": {}})") == type);
    CHECK(refusal(R"({"origin": {"config": "/c"}})") == type);
    CHECK(refusal(R"({"origin": {"type": "loop", "config": "/c"}})") == type);

    const std::string config =
        "field 'origin.config' must be an absolute path to the backstore's config";
    CHECK(refusal(R"({"origin": {"type": "tcmu"}})") == config);
    CHECK(refusal(R"({"origin": {"type": "tcmu", "config": ""}})") == config);
    CHECK(refusal(R"({"origin": {"type": "tcmu", "config": "etc/c.json"}})") == config);

    const std::string handler = "field 'origin.handler' must be a handler name like \"overlaybd\"";
    CHECK(refusal(R"({"origin": {"type": "tcmu", "config": "/c", "handler": ""}})") == handler);
    CHECK(refusal(R"({"origin": {"type": "tcmu", "config": "/c", "handler": "../ob"}})") ==
          handler);

    const std::string size = "field 'origin.size_bytes' must be a positive integer up to 2^62";
    for (const std::string value : {"0", "-1", "1.5", "\"4096\"", "true", "4611686018427387905",
                                    "18446744073709551615", "1e3"}) {
        INFO("size_bytes " << value);
        CHECK(refusal(R"({"origin": {"type": "tcmu", "config": "/c", "size_bytes": )" + value +
                      "}}") == size);
    }
}

TEST_CASE("parse_one_string_field: the body of a fork or a flatten", "[create_request]") {
    auto id = parse_one_string_field(R"({"id": "sb2"})", "id", true);
    REQUIRE(id.ok());
    CHECK(id.value() == "sb2");
    auto none = parse_one_string_field("", "id", true);
    REQUIRE(none.ok());
    CHECK_FALSE(none.value());
    auto null = parse_one_string_field(R"({"template": null})", "template", false);
    REQUIRE(null.ok());
    CHECK_FALSE(null.value());
    CHECK(parse_one_string_field("", "template", false).error().error.message() ==
          "the request needs a JSON object body");
    CHECK(parse_one_string_field(R"({"id": 7})", "id", true).error().error.message() ==
          "field 'id' must be a string");
    CHECK(parse_one_string_field(R"({"id": "a"})", "template", true).error().error.message() ==
          "unknown field 'id'");
}

TEST_CASE("parse_json_body: an object with known fields, or why not", "[create_request]") {
    auto empty = parse_json_body("", {"id"}, true);
    REQUIRE(empty.ok());
    CHECK(empty->empty());
    CHECK(parse_json_body("", {"id"}, false).error().error.message() ==
          "the request needs a JSON object body");
    auto object = parse_json_body(R"({"id": "a"})", {"id", "template"}, false);
    REQUIRE(object.ok());
    CHECK(object->at("id").as_string() == "a");
    CHECK(parse_json_body("{}", {}, true).ok());
    CHECK(parse_json_body(R"({"id": 1})", {}, true).error().error.message() ==
          "unknown field 'id'");
    CHECK(parse_json_body("[]", {}, true).error().kind == FailureKind::InvalidRequest);

    std::optional<std::string> problem;
    CHECK(string_field(*object, "id", problem) == "a");
    CHECK_FALSE(string_field(*object, "template", problem));
    CHECK_FALSE(problem);
    auto typed = parse_json_body(R"({"a": 1, "b": null})", {"a", "b"}, false);
    CHECK_FALSE(string_field(*typed, "b", problem));
    CHECK_FALSE(problem);
    CHECK_FALSE(string_field(*typed, "a", problem));
    CHECK(problem == "field 'a' must be a string");
}
