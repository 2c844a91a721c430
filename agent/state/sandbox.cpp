#include "agent/state/sandbox.hpp"

#include <boost/json.hpp>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <ctime>

#include "agent/state/formats.hpp"
#include "agent/state/template_blocks.hpp"

namespace wrenn::agent {

namespace json = boost::json;

std::string_view to_string(SandboxState state) {
    return state == SandboxState::Running ? "running" : "paused";
}

bool TemplateIdentity::same_file_state(const TemplateIdentity& other) const {
    return device == other.device && inode == other.inode && size_bytes == other.size_bytes &&
           mtime_ns == other.mtime_ns && ctime_ns == other.ctime_ns;
}

std::string TemplateIdentity::describe_change_from(const TemplateIdentity& was) const {
    std::string out;
    auto note = [&out](std::string_view what, auto before, auto after) {
        if (before != after) {
            out += out.empty() ? "" : ", ";
            out +=
                std::string(what) + " " + std::to_string(before) + " -> " + std::to_string(after);
        }
    };
    if (device != was.device || inode != was.inode) {
        out = "another file (replaced by rename or copy)";
    }
    note("size", was.size_bytes, size_bytes);
    if (mtime_ns != was.mtime_ns || ctime_ns != was.ctime_ns) {
        out += out.empty() ? "" : ", ";
        out += "modified since";
    }
    if (!digest.empty() && !was.digest.empty() && digest != was.digest) {
        out += out.empty() ? "" : ", ";
        out += "content " + was.digest + " -> " + digest;
    }
    return out.empty() ? "nothing" : out;
}

std::string OriginSpec::key() const {
    if (type == Type::Loop) {
        return "loop:" + path;
    }
    // The handler and size make a different TCMU device (a different id) for the same config.
    return "tcmu:" + handler + ":" + (size_bytes ? std::to_string(*size_bytes) : "-") + ":" + path;
}

namespace {

json::object origin_to_json(const OriginSpec& origin, const std::string& device) {
    json::object out;
    out["type"] = origin.type == OriginSpec::Type::Loop ? "loop" : "tcmu";
    if (origin.type == OriginSpec::Type::Tcmu) {
        out["config"] = origin.path;
        out["handler"] = origin.handler;
        if (origin.size_bytes) {
            out["size_bytes"] = *origin.size_bytes;
        }
    } else {
        out["image"] = origin.path;
        if (origin.identity) {
            const TemplateIdentity& t = *origin.identity;
            out["identity"] = json::object{
                {"device", t.device},
                {"inode", t.inode},
                {"size_bytes", t.size_bytes},
                {"mtime_ns", t.mtime_ns},
                {"ctime_ns", t.ctime_ns},
                {"digest", t.digest.empty() ? json::value(nullptr) : json::value(t.digest)}};
        }
    }
    out["device"] = device.empty() ? json::value(nullptr) : json::value(device);
    return out;
}

Error bad_record(std::string detail) {
    return Error("read sandbox record", 0, std::move(detail));
}

Result<std::string> get_string(const json::object& obj, std::string_view key) {
    const auto* v = obj.if_contains(key);
    if (v == nullptr || !v->is_string()) {
        return bad_record("field '" + std::string(key) + "' is missing or not a string");
    }
    return std::string(v->as_string());
}

Result<std::int64_t> get_i64(const json::object& obj, std::string_view key) {
    const auto* v = obj.if_contains(key);
    if (v == nullptr || !v->is_int64()) {
        return bad_record("field '" + std::string(key) + "' is missing or not an integer");
    }
    return v->as_int64();
}

Result<std::uint64_t> get_u64(const json::object& obj, std::string_view key) {
    const auto* v = obj.if_contains(key);
    if (v == nullptr) {
        return bad_record("field '" + std::string(key) + "' is missing");
    }
    if (v->is_uint64()) {
        return v->as_uint64();
    }
    if (v->is_int64() && v->as_int64() >= 0) {
        return static_cast<std::uint64_t>(v->as_int64());
    }
    return bad_record("field '" + std::string(key) + "' is not a non-negative integer");
}

}  // namespace

json::object record_to_json(const Sandbox& s) {
    json::object out;
    out["version"] = kRecordFormat;
    out["id"] = s.id;
    out["state"] = to_string(s.state);
    out["template"] = s.template_name.empty() ? json::value(nullptr) : json::value(s.template_name);
    out["origin"] = origin_to_json(s.origin, s.origin_device);
    out["device"] = s.device.empty() ? json::value(nullptr) : json::value(s.device);
    out["cow"] = json::object{
        {"path", s.cow_path},
        {"size_bytes", s.cow_size_bytes},
        {"allocated_bytes", s.cow_allocated_bytes},
        {"status", s.cow_status.empty() ? json::value(nullptr) : json::value(s.cow_status)}};
    out["origin_size_bytes"] = s.origin_size_bytes;
    out["created_at"] = s.created_at;
    out["updated_at"] = s.updated_at;
    out["last_error"] = s.last_error ? json::value(*s.last_error) : json::value(nullptr);
    out["forked_from"] = s.forked_from.empty() ? json::value(nullptr) : json::value(s.forked_from);
    return out;
}

json::object api_view(const Sandbox& s) {
    json::object out = record_to_json(s);
    out.erase("version");
    // The digest of the image the sandbox was made over, where a client looks first: "pending"
    // while the agent reads it in the background, null for a TCMU origin.
    if (s.origin.identity) {
        out["template_digest"] =
            s.origin.identity->digest.empty() ? "pending" : s.origin.identity->digest;
    } else {
        out["template_digest"] = nullptr;
    }
    out.erase("origin_size_bytes");
    if (s.state == SandboxState::Running) {
        const bool suspended = !s.io_suspended_by.empty() || !s.io_error.empty();
        out["io"] = s.io_suspended_for_space ? "suspended_no_space"
                    : suspended              ? "suspended"
                                             : "active";
        if (suspended) {
            json::array by;
            for (const auto& reason : s.io_suspended_by) {
                by.emplace_back(reason);
            }
            out["io_suspended_by"] = std::move(by);
        }
        if (!s.io_error.empty()) {
            out["io_error"] = s.io_error;
        }
    }
    return out;
}

Result<Sandbox> record_from_json(const json::value& value) {
    if (!value.is_object()) {
        return bad_record("not a JSON object");
    }
    if (const int version = format_version(value); version > kRecordFormat) {
        return newer_format("the record", version, kRecordFormat);
    } else if (version == 0) {
        return bad_record("field 'version' is not a positive integer");
    }
    const auto& obj = value.as_object();
    Sandbox s;
    auto id = get_string(obj, "id");
    if (!id) {
        return std::move(id).error();
    }
    s.id = *id;
    auto state = get_string(obj, "state");
    if (!state) {
        return std::move(state).error();
    }
    if (*state == "running") {
        s.state = SandboxState::Running;
    } else if (*state == "paused") {
        s.state = SandboxState::Paused;
    } else {
        return bad_record("unknown state '" + *state + "'");
    }
    if (const auto* t = obj.if_contains("template"); t != nullptr && t->is_string()) {
        s.template_name = std::string(t->as_string());
    }
    if (const auto* d = obj.if_contains("device"); d != nullptr && d->is_string()) {
        s.device = std::string(d->as_string());
    }
    const auto* origin = obj.if_contains("origin");
    if (origin == nullptr || !origin->is_object()) {
        return bad_record("field 'origin' is missing");
    }
    const auto& o = origin->as_object();
    auto type = get_string(o, "type");
    if (!type) {
        return std::move(type).error();
    }
    if (*type == "loop") {
        auto image = get_string(o, "image");
        if (!image) {
            return std::move(image).error();
        }
        s.origin = OriginSpec{OriginSpec::Type::Loop, *image, {}, std::nullopt, std::nullopt};
        if (const auto* ident = o.if_contains("identity"); ident != nullptr && ident->is_object()) {
            const auto& io = ident->as_object();
            auto device = get_u64(io, "device");
            auto inode = get_u64(io, "inode");
            auto size = get_u64(io, "size_bytes");
            auto mtime = get_i64(io, "mtime_ns");
            auto ctime = get_i64(io, "ctime_ns");
            if (!device || !inode || !size || !mtime || !ctime) {
                return bad_record(
                    "origin.identity needs device, inode, size_bytes, mtime_ns, ctime_ns");
            }
            // "digest" names its algorithm (null while pending); agents before it wrote the
            // SHA-256 of the whole image as "sha256".
            std::string digest;
            const auto* named = io.if_contains("digest");
            const auto* whole = io.if_contains("sha256");
            const json::value* given = named != nullptr ? named : whole;
            if (given != nullptr && given->is_string() && !given->as_string().empty()) {
                auto parsed = parse_digest(std::string_view(given->as_string()));
                if (!parsed) {
                    return bad_record("origin.identity has a digest this agent does not know: " +
                                      std::string(given->as_string()).substr(0, 80));
                }
                digest = parsed->algorithm + ":" + parsed->hex;
            } else if (given != nullptr && !given->is_null() && !given->is_string()) {
                return bad_record("origin.identity.digest must be a string or null");
            }
            s.origin.identity = TemplateIdentity{*device, *inode, *size, *mtime, *ctime, digest};
        }
    } else if (*type == "tcmu") {
        auto config = get_string(o, "config");
        auto handler = get_string(o, "handler");
        if (!config || !handler) {
            return bad_record("tcmu origin needs 'config' and 'handler'");
        }
        s.origin =
            OriginSpec{OriginSpec::Type::Tcmu, *config, *handler, std::nullopt, std::nullopt};
        if (o.contains("size_bytes")) {
            auto size = get_u64(o, "size_bytes");
            if (!size) {
                return std::move(size).error();
            }
            s.origin.size_bytes = *size;
        }
    } else {
        return bad_record("unknown origin type '" + *type + "'");
    }
    if (const auto* dev = o.if_contains("device"); dev != nullptr && dev->is_string()) {
        s.origin_device = std::string(dev->as_string());
    }
    const auto* cow = obj.if_contains("cow");
    if (cow == nullptr || !cow->is_object()) {
        return bad_record("field 'cow' is missing");
    }
    auto cow_path = get_string(cow->as_object(), "path");
    auto cow_size = get_u64(cow->as_object(), "size_bytes");
    if (!cow_path || !cow_size) {
        return bad_record("field 'cow' needs 'path' and 'size_bytes'");
    }
    s.cow_path = *cow_path;
    s.cow_size_bytes = *cow_size;
    if (auto alloc = get_u64(cow->as_object(), "allocated_bytes")) {
        s.cow_allocated_bytes = *alloc;
    }
    if (const auto* st = cow->as_object().if_contains("status"); st != nullptr && st->is_string()) {
        s.cow_status = std::string(st->as_string());
    }
    if (auto size = get_u64(obj, "origin_size_bytes")) {
        s.origin_size_bytes = *size;
    }
    if (auto created = get_string(obj, "created_at")) {
        s.created_at = *created;
    }
    if (auto updated = get_string(obj, "updated_at")) {
        s.updated_at = *updated;
    }
    if (const auto* err = obj.if_contains("last_error"); err != nullptr && err->is_string()) {
        s.last_error = std::string(err->as_string());
    }
    if (const auto* from = obj.if_contains("forked_from"); from != nullptr && from->is_string()) {
        s.forked_from = std::string(from->as_string());
    }
    return s;
}

std::string format_utc(std::chrono::system_clock::time_point when) {
    const std::time_t secs = std::chrono::system_clock::to_time_t(when);
    const auto millis =
        std::chrono::duration_cast<std::chrono::milliseconds>(when.time_since_epoch()).count() %
        1000;
    std::tm tm{};
    gmtime_r(&secs, &tm);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                  tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                  static_cast<int>(millis));
    return buf;
}

std::string utc_now() {
    return format_utc(std::chrono::system_clock::now());
}

}  // namespace wrenn::agent
