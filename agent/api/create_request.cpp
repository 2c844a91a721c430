#include "agent/api/create_request.hpp"

#include <boost/json/object.hpp>
#include <cstdint>
#include <optional>
#include <string>

#include "agent/api/json_body.hpp"
#include "agent/state/template_blocks.hpp"
#include "agent/table/checks.hpp"

namespace wrenn::agent {

namespace json = boost::json;

namespace {

// The TCMU origin of {"origin": {...}}: "type" must be "tcmu", "config" an absolute path,
// "handler" a name (default "overlaybd"), "size_bytes" (optional) at most 4 EiB.
Result<OriginSpec, Failure> parse_tcmu_origin(const json::value& origin) {
    if (!origin.is_object()) {
        return invalid_request("field 'origin' must be an object");
    }
    const auto& o = origin.as_object();
    for (const auto& field : o) {
        const auto k = field.key();
        if (k != "type" && k != "config" && k != "handler" && k != "size_bytes") {
            return invalid_request("unknown field 'origin." + std::string(k) + "'");
        }
    }
    std::optional<std::string> problem;
    auto type = string_field(o, "type", problem);
    auto config = string_field(o, "config", problem);
    auto handler = string_field(o, "handler", problem);
    if (problem) {
        return invalid_request(*problem);
    }
    if (type.value_or("") != "tcmu") {
        return invalid_request(
            "field 'origin.type' must be \"tcmu\" (for a template, give 'template')");
    }
    if (!config || config->empty() || (*config)[0] != '/') {
        return invalid_request(
            "field 'origin.config' must be an absolute path to the backstore's config");
    }
    OriginSpec spec{OriginSpec::Type::Tcmu, *config, handler.value_or("overlaybd"), std::nullopt,
                    std::nullopt};
    if (spec.handler.empty() || spec.handler.find('/') != std::string::npos) {
        return invalid_request("field 'origin.handler' must be a handler name like \"overlaybd\"");
    }
    if (const auto* size = o.if_contains("size_bytes"); size != nullptr && !size->is_null()) {
        // At most 4 EiB: the CoW is sized from it (dm::cow_size_for_origin), which wraps around
        // for sizes near 2^64 and must fit in an off_t for ftruncate.
        constexpr std::uint64_t kMaxOriginBytes = std::uint64_t{1} << 62;
        if (size->is_uint64() && size->as_uint64() > 0 && size->as_uint64() <= kMaxOriginBytes) {
            spec.size_bytes = size->as_uint64();
        } else if (size->is_int64() && size->as_int64() > 0 &&
                   static_cast<std::uint64_t>(size->as_int64()) <= kMaxOriginBytes) {
            spec.size_bytes = static_cast<std::uint64_t>(size->as_int64());
        } else {
            return invalid_request(
                "field 'origin.size_bytes' must be a positive integer up to 2^62");
        }
    }
    return spec;
}

}  // namespace

Result<CreateRequest, Failure> parse_create_request(std::string_view body_text) {
    auto body = parse_json_body(body_text, {"id", "template", "origin"}, false);
    if (!body) {
        return std::move(body).error();
    }
    std::optional<std::string> problem;
    const auto id = string_field(*body, "id", problem);
    const auto template_name = string_field(*body, "template", problem);
    if (problem) {
        return invalid_request(*problem);
    }
    // Only an absent id asks for a generated one; "" is a mistake, not a wish.
    if (id && id->empty()) {
        return invalid_request(
            "field 'id' is empty; leave it out to get a generated id, or give one that matches " +
            std::string(kNameRule));
    }
    CreateRequest create;
    create.id = id.value_or("");
    if (!create.id.empty() && !is_valid_name(create.id)) {
        return invalid_request("field 'id' must match " + std::string(kNameRule));
    }
    if (const auto* origin = body->if_contains("origin"); origin != nullptr && !origin->is_null()) {
        if (template_name) {
            return invalid_request("give either 'template' or 'origin', not both");
        }
        auto spec = parse_tcmu_origin(*origin);
        if (!spec) {
            return std::move(spec).error();
        }
        create.tcmu_origin = std::move(spec).value();
        return create;
    }
    if (!template_name) {
        return invalid_request("field 'template' is required (or 'origin' for a TCMU origin)");
    }
    if (!is_valid_name(*template_name) && !is_blocks_digest(*template_name)) {
        return invalid_request("field 'template' must match " + std::string(kNameRule) +
                               ", or be a template's digest (\"blocks-sha256-4k:<64 hex>\")");
    }
    create.template_name = *template_name;
    return create;
}

}  // namespace wrenn::agent
