#include "agent/api/api.hpp"

#include <boost/beast/http/field.hpp>
#include <boost/beast/http/status.hpp>
#include <boost/beast/http/verb.hpp>
#include <boost/json.hpp>
#include <memory>
#include <string_view>

#include "agent/api/api_views.hpp"
#include "agent/api/create_request.hpp"
#include "agent/api/json_body.hpp"
#include "archive/format.hpp"
#include "http/url.hpp"

namespace wrenn::agent {

namespace http = boost::beast::http;
namespace json = boost::json;
using wrenn::http::printable_path;
using wrenn::http::query_param;
using wrenn::http::split_path;
using wrenn::http::strip_query;

namespace {

HttpResponse make_response(const HttpRequest& request, unsigned status, std::string body,
                           std::string_view content_type = "application/json") {
    HttpResponse res{static_cast<http::status>(status), request.version()};
    res.set(http::field::server, "wrenn-agent");
    res.set(http::field::content_type, content_type);
    res.keep_alive(request.keep_alive());
    res.body() = std::move(body);
    res.prepare_payload();
    return res;
}

HttpResponse json_response(const HttpRequest& request, unsigned status, const json::value& value) {
    return make_response(request, status, json::serialize(value) + "\n");
}

HttpResponse failure_response(const HttpRequest& request, const Failure& f) {
    return json_error(request, failure_http_status(f.kind), failure_code(f.kind),
                      f.error.message());
}

}  // namespace

HttpResponse json_error(const HttpRequest& request, unsigned status, std::string_view code,
                        std::string_view message) {
    json::object body{{"error", json::object{{"code", code}, {"message", message}}}};
    return json_response(request, status, body);
}

Api::Api(SandboxManager& manager, Platform& platform, Metrics& metrics, ApiOptions options)
    : manager_(manager), platform_(platform), metrics_(metrics), options_(std::move(options)) {}

void Api::handle(HttpRequest&& request_in, Respond respond) {
    // The request outlives this call: answers may come from the worker pool.
    auto request = std::make_shared<HttpRequest>(std::move(request_in));
    const auto& req = *request;
    const auto parts = split_path(strip_query(req.target()));
    const http::verb verb = req.method();

    auto method_not_allowed = [&](std::string_view allow) {
        HttpResponse res =
            json_error(req, 405, "method_not_allowed",
                       std::string(req.method_string()) + " is not allowed on " +
                           printable_path(req.target()) + " (allowed: " + std::string(allow) + ")");
        res.set(http::field::allow, allow);
        respond(std::move(res));
    };
    auto bad_request = [&](std::string_view message) {
        respond(json_error(req, 400, "invalid_request", message));
    };
    auto answer_sandbox = [request, respond](unsigned status) {
        return [request, respond, status](Result<Sandbox, Failure> outcome) {
            if (!outcome) {
                respond(failure_response(*request, outcome.error()));
                return;
            }
            respond(json_response(*request, status, api_view(outcome.value())));
        };
    };

    if (parts.size() == 1 && parts[0] == "healthz") {
        if (verb != http::verb::get) {
            return method_not_allowed("GET");
        }
        const KernelSupport support = platform_.support();
        const std::optional<SpaceStatus> space =
            options_.space ? std::optional(options_.space()) : std::nullopt;
        const bool ok = support.device_mapper && support.loop;
        return respond(
            json_response(req, ok ? 200 : 503, health_json(support, space, options_.insecure_tcp)));
    }
    if (parts.size() == 1 && parts[0] == "metrics") {
        if (verb != http::verb::get) {
            return method_not_allowed("GET");
        }
        Metrics::Gauges gauges;
        gauges.sandboxes_by_state = manager_.count_by_state();
        const auto counts = platform_.attached_origins();
        gauges.loops_attached = counts.loops;
        gauges.tcmu_origins_attached = counts.tcmu;
        if (options_.connections) {
            gauges.connections = options_.connections();
        }
        if (options_.space) {
            gauges.space = options_.space();
        }
        gauges.cow_disk_bytes = manager_.cow_disk_usage();
        return respond(make_response(req, 200, metrics_.render(gauges),
                                     "text/plain; version=0.0.4; charset=utf-8"));
    }
    if (parts.size() == 1 && parts[0] == "templates") {
        if (verb != http::verb::get) {
            return method_not_allowed("GET");
        }
        return manager_.list_templates(
            [request, respond](Result<std::vector<TemplateInfo>, Failure> out) {
                if (!out) {
                    return respond(failure_response(*request, out.error()));
                }
                respond(json_response(*request, 200, templates_json(out.value())));
            });
    }
    if (parts.empty() || parts[0] != "sandboxes" || parts.size() > 3) {
        return respond(
            json_error(req, 404, "not_found",
                       "no route " + printable_path(req.target()) + " (see docs/api.md)"));
    }

    if (parts.size() == 2 && parts[1] == "import" && verb == http::verb::post) {
        // Only a transport that streams this route's body reaches here without one.
        return respond(json_error(req, 415, "unsupported_media_type",
                                  std::string("POST /sandboxes/import takes the archive as its "
                                              "body, sent with \"Content-Type: ") +
                                      archive::kContentType + "\""));
    }
    if (parts.size() == 1) {
        if (verb == http::verb::get) {
            return respond(json_response(req, 200, sandboxes_json(manager_.list())));
        }
        if (verb != http::verb::post) {
            return method_not_allowed("GET, POST");
        }
        auto create = parse_create_request(req.body());
        if (!create) {
            return respond(failure_response(req, create.error()));
        }
        return manager_.create(std::move(create).value(), answer_sandbox(201));
    }

    const std::string id(parts[1]);
    if (!is_valid_name(id)) {
        return bad_request("sandbox id in the path must match [A-Za-z0-9][A-Za-z0-9_-]{0,63}");
    }
    if (parts.size() == 2) {
        if (verb == http::verb::get) {
            return manager_.get_live(id, answer_sandbox(200));
        }
        if (verb == http::verb::delete_) {
            return manager_.destroy(id, [request, respond](Result<Done, Failure> out) {
                if (!out) {
                    return respond(failure_response(*request, out.error()));
                }
                HttpResponse res{http::status::no_content, request->version()};
                res.set(http::field::server, "wrenn-agent");
                res.keep_alive(request->keep_alive());
                res.prepare_payload();
                respond(std::move(res));
            });
        }
        return method_not_allowed("GET, DELETE");
    }

    const std::string_view action = parts[2];
    if (action == "export") {
        if (verb != http::verb::get) {
            return method_not_allowed("GET");
        }
        return export_sandbox(request, id, respond);
    }
    if (action != "pause" && action != "resume" && action != "flatten" && action != "fork") {
        return respond(json_error(req, 404, "not_found",
                                  "no route " + printable_path(req.target()) +
                                      " (actions: pause, resume, flatten, fork, export)"));
    }
    if (verb != http::verb::post) {
        return method_not_allowed("POST");
    }
    if (action == "fork") {
        auto body = parse_json_body(req.body(), {"id"}, true);
        if (!body) {
            return respond(failure_response(req, body.error()));
        }
        std::optional<std::string> problem;
        const auto new_id = string_field(*body, "id", problem);
        if (problem) {
            return bad_request(*problem);
        }
        if (new_id && (new_id->empty() || !is_valid_name(*new_id))) {
            return bad_request(
                "field 'id' must match [A-Za-z0-9][A-Za-z0-9_-]{0,63}; leave it out to get a "
                "generated id");
        }
        return manager_.fork(id, new_id.value_or(""), answer_sandbox(201));
    }
    if (action == "pause" || action == "resume") {
        if (auto body = parse_json_body(req.body(), {}, true); !body) {
            return respond(failure_response(req, body.error()));
        }
        if (action == "pause") {
            return manager_.pause(id, answer_sandbox(200));
        }
        return manager_.resume(id, answer_sandbox(200));
    }
    auto body = parse_json_body(req.body(), {"template"}, false);
    if (!body) {
        return respond(failure_response(req, body.error()));
    }
    std::optional<std::string> problem;
    auto name = string_field(*body, "template", problem);
    if (problem) {
        return bad_request(*problem);
    }
    if (!name || !is_valid_name(*name)) {
        return bad_request(
            "field 'template' is required and must match [A-Za-z0-9][A-Za-z0-9_-]{0,63}");
    }
    manager_.flatten(id, *name, [request, respond](Result<TemplateInfo, Failure> out) {
        if (!out) {
            return respond(failure_response(*request, out.error()));
        }
        respond(json_response(*request, 201, flattened_json(out.value())));
    });
}

}  // namespace wrenn::agent

namespace wrenn::agent {

namespace {

// One export's pipe: the worker writes the archive into its writer while the server sends
// what the reader gets. `started` once the 200 went out (only the strand's thread touches it).
struct ExportPipe {
    explicit ExportPipe(wrenn::http::BodyPipe p) : pipe(std::move(p)) {}
    wrenn::http::BodyPipe pipe;
    bool started = false;
};

}  // namespace

void Api::export_sandbox(const std::shared_ptr<HttpRequest>& request, const std::string& id,
                         const Respond& respond) {
    const auto& req = *request;
    bool compress = true;
    if (const auto value = query_param(req.target(), "compress")) {
        if (*value == "false" || *value == "0") {
            compress = false;
        } else if (*value != "true" && *value != "1") {
            return respond(json_error(req, 400, "invalid_request",
                                      "query parameter 'compress' must be true or false"));
        }
    }
    auto pipe = wrenn::http::make_body_pipe();
    if (!pipe) {
        return respond(json_error(req, 500, "internal", pipe.error().message()));
    }
    auto shared = std::make_shared<ExportPipe>(std::move(pipe).value());
    manager_.export_sandbox(
        id, compress,
        [shared, request, respond, id]() -> archive::ByteSink {
            shared->started = true;
            wrenn::http::StreamedResponse res{{}, std::move(shared->pipe.reader)};
            res.header.result(http::status::ok);
            res.header.set(http::field::server, "wrenn-agent");
            res.header.set(http::field::content_type, archive::kContentType);
            res.header.set(http::field::content_disposition,
                           "attachment; filename=\"" + id + ".wrenn\"");
            respond(std::move(res));
            return [shared](std::span<const std::byte> bytes) {
                return shared->pipe.writer.write(bytes);
            };
        },
        [shared, request, respond](Result<TransferStats, Failure> out) {
            if (!shared->started) {
                if (!out) {
                    return respond(failure_response(*request, out.error()));
                }
                return respond(json_error(*request, 500, "internal", "the export sent nothing"));
            }
            if (!out) {
                // The client has a 200 already: the server aborts the transfer (no last chunk).
                shared->pipe.writer.fail(out.error().error);
            } else {
                shared->pipe.writer.finish();
            }
        });
}

std::optional<wrenn::http::StreamedBody> Api::streamed_body(
    const wrenn::http::RequestHeader& header) const {
    const auto parts = split_path(strip_query(header.target()));
    if (header.method() == http::verb::post && parts.size() == 2 && parts[0] == "sandboxes" &&
        parts[1] == "import") {
        return wrenn::http::StreamedBody{archive::kContentType, options_.max_import_bytes == 0
                                                                    ? UINT64_MAX
                                                                    : options_.max_import_bytes};
    }
    return std::nullopt;
}

void Api::handle_import(HttpRequest&& request_in, wrenn::http::BodyReader body, Respond respond) {
    auto request = std::make_shared<HttpRequest>(std::move(request_in));
    const auto id = query_param(request->target(), "id");
    if (!id || id->empty() || !is_valid_name(*id)) {
        // The body reader goes with this call: the server stops reading the body.
        return respond(json_error(*request, 400, "invalid_request",
                                  "POST /sandboxes/import needs ?id=ID, an id matching "
                                  "[A-Za-z0-9][A-Za-z0-9_-]{0,63}"));
    }
    auto reader = std::make_shared<wrenn::http::BodyReader>(std::move(body));
    SandboxManager::ImportOptions options;
    options.max_bytes = options_.max_import_bytes == 0 ? UINT64_MAX : options_.max_import_bytes;
    manager_.import_sandbox(
        std::string(*id), options,
        [reader](std::span<std::byte> buffer) { return reader->read(buffer); },
        [request, respond, reader](Result<Sandbox, Failure> out) {
            reader->close();  // a refusal before the end: the server stops reading the body
            if (!out) {
                return respond(failure_response(*request, out.error()));
            }
            respond(json_response(*request, 201, api_view(out.value())));
        });
}

}  // namespace wrenn::agent
