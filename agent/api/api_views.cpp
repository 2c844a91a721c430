#include "agent/api/api_views.hpp"

#include <boost/json/array.hpp>
#include <boost/json/value.hpp>
#include <string>

namespace wrenn::agent {

namespace json = boost::json;

namespace {

json::object kernel_part(bool usable, const std::string& reason) {
    json::object o{{"usable", usable}};
    if (!usable) {
        o["reason"] = reason;
    }
    return o;
}

// "digest": the template's digest, "pending" while the agent reads it in the background, null
// for an image it refuses; "sha256": the whole image's SHA-256 hex, null unless computed (only
// for an archive or record of an earlier agent).
json::value digest_json(const TemplateInfo& t) {
    if (!t.problem.empty()) {
        return nullptr;
    }
    return t.digest.empty() ? json::value("pending") : json::value(t.digest);
}
json::value whole_sha256_json(const TemplateInfo& t) {
    const auto colon = t.sha256.find(':');
    return colon == std::string::npos ? json::value(nullptr)
                                      : json::value(t.sha256.substr(colon + 1));
}

}  // namespace

json::object health_json(const KernelSupport& k, const std::optional<SpaceStatus>& space,
                         std::size_t resumes_failing, bool insecure_tcp) {
    const bool ok = k.device_mapper && k.loop;
    json::object health{{"status", ok ? "ok" : "unavailable"},
                        {"device_mapper", kernel_part(k.device_mapper, k.device_mapper_reason)},
                        {"loop", kernel_part(k.loop, k.loop_reason)},
                        {"tcmu", kernel_part(k.tcmu, k.tcmu_reason)}};
    if (space) {
        health["space"] = space_json(*space);
        if (ok && space->degraded()) {
            health["status"] = "degraded";
        }
    }
    if (resumes_failing > 0) {
        health["io"] = json::object{
            {"resumes_failing", resumes_failing},
            {"message", "the I/O of " + std::to_string(resumes_failing) +
                            " sandbox(es) stays suspended because resuming their device failed; "
                            "the agent retries every second, and GET /sandboxes shows each one's "
                            "io_error"}};
        if (ok) {
            health["status"] = "degraded";
        }
    }
    health["insecure_tcp"] = insecure_tcp;
    if (insecure_tcp) {
        health["warning"] =
            "serving TCP without a token (--insecure-tcp): anyone who can connect may create and "
            "destroy sandboxes";
    }
    return health;
}

json::object space_json(const SpaceStatus& s) {
    json::object out{{"level", to_string(s.level)}, {"suspended_sandboxes", s.suspended}};
    if (s.known) {
        out["free_bytes"] = s.space.free_bytes;
        out["size_bytes"] = s.space.size_bytes;
        out["min_free_bytes"] = s.min_free_bytes;
        out["critical_free_bytes"] = s.critical_free_bytes;
    }
    if (!s.error.empty()) {
        out["error"] = s.error;
    }
    if (s.level == SpaceLevel::Low) {
        out["message"] = "below --min-free: creates and resumes answer 507 insufficient_storage";
    } else if (s.level == SpaceLevel::Critical) {
        out["message"] =
            "below --critical-free: running sandboxes' I/O is suspended until space is back "
            "above --min-free";
    } else if (s.suspended > 0) {
        out["message"] = "sandboxes' I/O is suspended for space; resuming";
    }
    return out;
}

json::object sandboxes_json(const std::vector<Sandbox>& sandboxes) {
    json::array list;
    for (const auto& sb : sandboxes) {
        list.push_back(api_view(sb));
    }
    return json::object{{"sandboxes", std::move(list)}};
}

json::object templates_json(const std::vector<TemplateInfo>& templates) {
    json::array list;
    for (const auto& t : templates) {
        list.push_back(template_json(t));
    }
    return json::object{{"templates", std::move(list)}};
}

json::object template_json(const TemplateInfo& t) {
    json::object out{{"name", t.name},
                     {"path", t.path},
                     {"size_bytes", t.size_bytes},
                     {"digest", digest_json(t)},
                     {"sha256", whole_sha256_json(t)},
                     {"sandboxes", t.sandboxes}};
    if (!t.problem.empty()) {
        out["problem"] = t.problem;
    }
    return out;
}

json::object template_users_json(const TemplateInfo& t) {
    json::object out = template_json(t);
    json::array users;
    for (const auto& user : t.users) {
        users.push_back(json::object{{"id", user.id}, {"state", to_string(user.state)}});
    }
    out["users"] = std::move(users);
    return out;
}

json::object uploaded_json(const TemplateInfo& t) {
    json::object out = flattened_json(t);
    out["allocated_bytes"] = t.allocated_bytes.value_or(0);
    return out;
}

json::object flattened_json(const TemplateInfo& t) {
    return json::object{{"template", t.name},
                        {"path", t.path},
                        {"size_bytes", t.size_bytes},
                        {"digest", digest_json(t)}};
}

}  // namespace wrenn::agent
