#pragma once

// The JSON the API answers with, apart from the routes: pure functions of what the manager and
// the platform report. A sandbox's own view is api_view (agent/state/sandbox.hpp).
#include <boost/json/object.hpp>
#include <optional>
#include <vector>

#include "agent/platform/platform.hpp"
#include "agent/platform/space.hpp"
#include "agent/sandboxes/operations.hpp"
#include "agent/state/sandbox.hpp"

namespace wrenn::agent {

// GET /healthz: "status" is "ok", "unavailable" (no device-mapper or loop; the API answers 503)
// or "degraded" (usable, but short of space, or some sandbox's device failed to resume: the API
// still answers 200); each kernel part with the reason it is not usable; the state filesystem's
// space when watched; the resumes being retried; whether TCP is served without a token, with a
// warning when it is.
boost::json::object health_json(const KernelSupport& kernel,
                                const std::optional<SpaceStatus>& space,
                                std::size_t resumes_failing, bool insecure_tcp);
// The state filesystem's space and what the agent refuses or holds because of it.
boost::json::object space_json(const SpaceStatus& space);

// GET /sandboxes: {"sandboxes": [api_view, ...]}.
boost::json::object sandboxes_json(const std::vector<Sandbox>& sandboxes);
// GET /templates: {"templates": [template_json, ...]}.
boost::json::object templates_json(const std::vector<TemplateInfo>& templates);
// One template: name, path, size, digest ("pending" while it is read, null for an image the
// agent refuses, with "problem" saying why), whole-image SHA-256 (null unless known), sandboxes.
boost::json::object template_json(const TemplateInfo& info);
// POST /sandboxes/{id}/flatten: the new template's name, path, size and digest.
boost::json::object flattened_json(const TemplateInfo& info);
// GET /templates/{name}: template_json and "users", the sandboxes made over it.
boost::json::object template_users_json(const TemplateInfo& info);
// PUT /templates/{name}: flattened_json and "allocated_bytes".
boost::json::object uploaded_json(const TemplateInfo& info);

}  // namespace wrenn::agent
