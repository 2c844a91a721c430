#include "agent/api/api.hpp"

#include <boost/beast/http/field.hpp>
#include <boost/beast/http/status.hpp>
#include <boost/json.hpp>
#include <memory>
#include <string_view>
#include <vector>

#include "agent/api/api_views.hpp"
#include "agent/api/create_request.hpp"
#include "agent/api/json_body.hpp"
#include "agent/table/checks.hpp"
#include "archive/format.hpp"
#include "http/core/url.hpp"
#include "http/policy/request_policy.hpp"

namespace wrenn::agent {

namespace http = boost::beast::http;
namespace json = boost::json;
using wrenn::http::printable_path;
using wrenn::http::query_param;
using wrenn::http::split_path;
using wrenn::http::strip_query;

std::span<const Api::Route> Api::routes() {
    using enum http::verb;
    // Tried in order. A path that some route matches but not with the request's method is a 405
    // listing the methods of the first pattern that matches it; a path none matches, a 404.
    static const Route kRoutes[] = {
        {get, "/healthz", &Api::health},
        {get, "/metrics", &Api::metrics},
        {get, "/templates", &Api::list_templates},
        {get, "/templates/{id}", &Api::get_template},
        {put, "/templates/{id}", &Api::upload_without_body},
        {delete_, "/templates/{id}", &Api::delete_template},
        {get, "/templates/{id}/image", &Api::download_template},
        {std::nullopt, "/templates/{id}/*", &Api::no_such_template_action},
        {get, "/sandboxes", &Api::list_sandboxes},
        {post, "/sandboxes", &Api::create_sandbox},
        {get, "/sandboxes/{id}", &Api::get_sandbox},
        {delete_, "/sandboxes/{id}", &Api::destroy_sandbox},
        // After /sandboxes/{id}: "import" is an id like any other for GET and DELETE.
        {post, "/sandboxes/import", &Api::import_without_archive},
        {post, "/sandboxes/{id}/pause", &Api::pause_sandbox},
        {post, "/sandboxes/{id}/resume", &Api::resume_sandbox},
        {post, "/sandboxes/{id}/flatten", &Api::flatten_sandbox},
        {post, "/sandboxes/{id}/fork", &Api::fork_sandbox},
        {get, "/sandboxes/{id}/export", &Api::export_sandbox},
        {std::nullopt, "/sandboxes/{id}/*", &Api::no_such_action},
    };
    return kRoutes;
}

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

// The answer of a removal (DELETE of a sandbox or a template): 204, or the failure.
auto answer_no_content(std::shared_ptr<HttpRequest> request, Respond respond) {
    return [request = std::move(request), respond = std::move(respond)](Result<Done, Failure> out) {
        if (!out) {
            return respond(failure_response(*request, out.error()));
        }
        HttpResponse res{http::status::no_content, request->version()};
        res.set(http::field::server, "wrenn-agent");
        res.keep_alive(request->keep_alive());
        res.prepare_payload();
        respond(std::move(res));
    };
}

// Answers an operation's outcome: `view` of its value with `status`, or its failure.
template <class T, class View>
Callback<T> answer_json(std::shared_ptr<HttpRequest> request, Respond respond, unsigned status,
                        View view) {
    return [request = std::move(request), respond = std::move(respond), status,
            view](Result<T, Failure> out) {
        if (!out) {
            return respond(failure_response(*request, out.error()));
        }
        respond(json_response(*request, status, view(out.value())));
    };
}

HttpResponse method_not_allowed(const HttpRequest& request, const std::string& allow) {
    HttpResponse res =
        json_error(request, 405, "method_not_allowed",
                   std::string(request.method_string()) + " is not allowed on " +
                       printable_path(request.target()) + " (allowed: " + allow + ")");
    res.set(http::field::allow, allow);
    return res;
}

// Whether `pattern` matches a path's segments: "{id}" and "*" match any one segment, any other
// segment of the pattern itself only. On a match, `id` is the segment "{id}" matched, if any.
bool matches(std::string_view pattern, const std::vector<std::string_view>& parts,
             std::optional<std::string_view>& id) {
    const auto want = split_path(pattern);
    if (want.size() != parts.size()) {
        return false;
    }
    std::optional<std::string_view> captured;
    for (std::size_t i = 0; i < want.size(); ++i) {
        if (want[i] == "{id}") {
            captured = parts[i];
        } else if (want[i] != "*" && want[i] != parts[i]) {
            return false;
        }
    }
    if (captured) {
        id = captured;
    }
    return true;
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
    Call call{std::make_shared<HttpRequest>(std::move(request_in)), {}, std::move(respond)};
    const HttpRequest& req = *call.request;
    const auto parts = split_path(strip_query(req.target()));

    // The routes whose pattern matches the path; those for any method only where none else does.
    std::vector<const Route*> matching;
    std::optional<std::string_view> id;
    for (const bool any_method : {false, true}) {
        for (const Route& route : routes()) {
            if (route.method.has_value() != any_method && matches(route.pattern, parts, id)) {
                matching.push_back(&route);
            }
        }
        if (!matching.empty()) {
            break;
        }
    }
    if (matching.empty()) {
        return call.respond(
            json_error(req, 404, "not_found",
                       "no route " + printable_path(req.target()) + " (see docs/api.md)"));
    }
    // A path that names a sandbox or a template needs a well-formed name, whatever the method.
    if (id) {
        if (!is_valid_name(*id)) {
            return call.respond(json_error(
                req, 400, "invalid_request",
                std::string(parts.front() == "templates" ? "template name" : "sandbox id") +
                    " in the path must match " + std::string(kNameRule)));
        }
        call.id = std::string(*id);
    }
    for (const Route* route : matching) {
        if (!route->method || *route->method == req.method()) {
            return (this->*route->answer)(call);
        }
    }
    // 405, with the methods of the first pattern that matches.
    std::string allow;
    for (const Route* route : matching) {
        if (route->pattern == matching.front()->pattern) {
            allow += (allow.empty() ? "" : ", ") + std::string(http::to_string(*route->method));
        }
    }
    call.respond(method_not_allowed(req, allow));
}

void Api::health(const Call& call) {
    const KernelSupport support = platform_.support();
    const std::optional<SpaceStatus> space =
        options_.space ? std::optional(options_.space()) : std::nullopt;
    const bool ok = support.device_mapper && support.loop;
    call.respond(json_response(
        *call.request, ok ? 200 : 503,
        health_json(support, space, manager_.resumes_failing(), options_.insecure_tcp)));
}

void Api::metrics(const Call& call) {
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
    gauges.io_suspended_by = manager_.io_suspended_by();
    gauges.io_resumes_failing = manager_.resumes_failing();
    call.respond(make_response(*call.request, 200, metrics_.render(gauges),
                               "text/plain; version=0.0.4; charset=utf-8"));
}

void Api::list_templates(const Call& call) {
    manager_.list_templates(
        answer_json<std::vector<TemplateInfo>>(call.request, call.respond, 200, templates_json));
}

void Api::list_sandboxes(const Call& call) {
    call.respond(json_response(*call.request, 200, sandboxes_json(manager_.list())));
}

void Api::create_sandbox(const Call& call) {
    auto create = parse_create_request(call.request->body());
    if (!create) {
        return call.respond(failure_response(*call.request, create.error()));
    }
    manager_.create(std::move(create).value(),
                    answer_json<Sandbox>(call.request, call.respond, 201, api_view));
}

void Api::import_without_archive(const Call& call) {
    // Only a transport that streams this route's body (streamed_body) reaches here without one.
    call.respond(json_error(*call.request, 415, "unsupported_media_type",
                            std::string("POST /sandboxes/import takes the archive as its body, "
                                        "sent with \"Content-Type: ") +
                                archive::kContentType + "\""));
}

void Api::get_sandbox(const Call& call) {
    manager_.get_live(call.id, answer_json<Sandbox>(call.request, call.respond, 200, api_view));
}

void Api::destroy_sandbox(const Call& call) {
    manager_.destroy(call.id, answer_no_content(call.request, call.respond));
}

void Api::pause_sandbox(const Call& call) {
    if (auto body = parse_json_body(call.request->body(), {}, true); !body) {
        return call.respond(failure_response(*call.request, body.error()));
    }
    manager_.pause(call.id, answer_json<Sandbox>(call.request, call.respond, 200, api_view));
}

void Api::resume_sandbox(const Call& call) {
    if (auto body = parse_json_body(call.request->body(), {}, true); !body) {
        return call.respond(failure_response(*call.request, body.error()));
    }
    manager_.resume(call.id, answer_json<Sandbox>(call.request, call.respond, 200, api_view));
}

void Api::flatten_sandbox(const Call& call) {
    auto body = parse_one_string_field(call.request->body(), "template", false);
    if (!body) {
        return call.respond(failure_response(*call.request, body.error()));
    }
    const std::optional<std::string>& name = body.value();
    if (!name || !is_valid_name(*name)) {
        return call.respond(failure_response(
            *call.request, invalid_request("field 'template' is required and must match " +
                                           std::string(kNameRule))));
    }
    manager_.flatten(call.id, *name,
                     answer_json<TemplateInfo>(call.request, call.respond, 201, flattened_json));
}

void Api::fork_sandbox(const Call& call) {
    auto body = parse_one_string_field(call.request->body(), "id", true);
    if (!body) {
        return call.respond(failure_response(*call.request, body.error()));
    }
    const std::optional<std::string>& new_id = body.value();
    if (new_id && (new_id->empty() || !is_valid_name(*new_id))) {
        return call.respond(failure_response(
            *call.request, invalid_request("field 'id' must match " + std::string(kNameRule) +
                                           "; leave it out to get a generated id")));
    }
    manager_.fork(call.id, new_id.value_or(""),
                  answer_json<Sandbox>(call.request, call.respond, 201, api_view));
}

void Api::no_such_action(const Call& call) {
    call.respond(json_error(*call.request, 404, "not_found",
                            "no route " + printable_path(call.request->target()) +
                                " (actions: pause, resume, flatten, fork, export)"));
}

void Api::get_template(const Call& call) {
    manager_.template_info(
        call.id, answer_json<TemplateInfo>(call.request, call.respond, 200, template_users_json));
}

void Api::upload_without_body(const Call& call) {
    // Only a transport that streams this route's body (streamed_body) reaches here.
    call.respond(json_error(*call.request, 500, "internal",
                            "PUT /templates/{name} needs a transport that streams its body"));
}

void Api::delete_template(const Call& call) {
    manager_.delete_template(call.id, answer_no_content(call.request, call.respond));
}

void Api::no_such_template_action(const Call& call) {
    call.respond(json_error(
        *call.request, 404, "not_found",
        "no route " + printable_path(call.request->target()) + " (a template has one: image)"));
}

namespace {

// One streamed answer's pipe: the worker writes into its writer while the server sends what
// the reader gets. `started` once the 200 went out (begin and done run one after the other on
// the transfer's thread).
struct ExportPipe {
    explicit ExportPipe(wrenn::http::BodyPipe p) : pipe(std::move(p)) {}
    wrenn::http::BodyPipe pipe;
    bool started = false;
};

// ?compress= (default true), or nullopt once a 400 has answered.
std::optional<bool> compress_param(const std::shared_ptr<HttpRequest>& request,
                                   const Respond& respond) {
    const auto value = query_param(request->target(), "compress");
    if (!value || *value == "true" || *value == "1") {
        return true;
    }
    if (*value == "false" || *value == "0") {
        return false;
    }
    respond(json_error(*request, 400, "invalid_request",
                       "query parameter 'compress' must be true or false"));
    return std::nullopt;
}

// Answers with a stream of `content_type` named `filename`: `start` gets the begin that sends
// the 200 (and returns where the bytes go) and the callback that ends the stream, or answers the
// failure when nothing was sent yet.
void answer_stream(const std::shared_ptr<HttpRequest>& request, const Respond& respond,
                   std::string content_type, std::string filename,
                   const std::function<void(ExportBegin, Callback<TransferStats>)>& start) {
    auto pipe = wrenn::http::make_body_pipe();
    if (!pipe) {
        return respond(json_error(*request, 500, "internal", pipe.error().message()));
    }
    auto shared = std::make_shared<ExportPipe>(std::move(pipe).value());
    start(
        [shared, respond, content_type = std::move(content_type),
         filename = std::move(filename)]() -> archive::ByteSink {
            shared->started = true;
            wrenn::http::StreamedResponse res{{}, std::move(shared->pipe.reader)};
            res.header.result(http::status::ok);
            res.header.set(http::field::server, "wrenn-agent");
            res.header.set(http::field::content_type, content_type);
            res.header.set(http::field::content_disposition,
                           "attachment; filename=\"" + filename + "\"");
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
                return respond(json_error(*request, 500, "internal", "the stream sent nothing"));
            }
            if (!out) {
                // The client has a 200 already: the server aborts the transfer (no last chunk).
                shared->pipe.writer.fail(out.error().error);
            } else {
                shared->pipe.writer.finish();
            }
        });
}

}  // namespace

void Api::export_sandbox(const Call& call) {
    const auto compress = compress_param(call.request, call.respond);
    if (!compress) {
        return;
    }
    answer_stream(call.request, call.respond, archive::kContentType, call.id + ".wrenn",
                  [this, id = call.id, compress](ExportBegin begin, Callback<TransferStats> done) {
                      manager_.export_sandbox(id, *compress, std::move(begin), std::move(done));
                  });
}

void Api::download_template(const Call& call) {
    const auto compress = compress_param(call.request, call.respond);
    if (!compress) {
        return;
    }
    answer_stream(
        call.request, call.respond, archive::kImageContentType, call.id + ".wrenn-template",
        [this, name = call.id, compress](ExportBegin begin, Callback<TransferStats> done) {
            manager_.download_template(name, *compress, std::move(begin), std::move(done));
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
    if (header.method() == http::verb::put && parts.size() == 2 && parts[0] == "templates" &&
        is_valid_name(parts[1])) {
        // The image, with room for a stream's framing (8 bytes per 4 KiB chunk) and zstd's
        // worst case; the image's own size is held to the limit as it arrives.
        const std::uint64_t max = options_.max_template_bytes;
        return wrenn::http::StreamedBody{archive::kImageContentType,
                                         max + max / 100 + (1 << 20),
                                         {"application/octet-stream", "application/zstd"},
                                         true};
    }
    return std::nullopt;
}

void Api::handle_streamed(HttpRequest&& request_in, wrenn::http::BodyReader body, Respond respond) {
    auto request = std::make_shared<HttpRequest>(std::move(request_in));
    const auto parts = split_path(strip_query(request->target()));
    if (request->method() == http::verb::put && parts.size() == 2 && parts[0] == "templates") {
        return upload_template(std::move(request), std::string(parts[1]), std::move(body),
                               std::move(respond));
    }
    import_sandbox(std::move(request), std::move(body), std::move(respond));
}

void Api::upload_template(std::shared_ptr<HttpRequest> request, std::string name,
                          wrenn::http::BodyReader body, Respond respond) {
    UploadRequest upload;
    upload.name = std::move(name);
    upload.digest = std::string(query_param(request->target(), "digest").value_or(""));
    const auto type = request->find(http::field::content_type);
    if (type == request->end()) {
        upload.form = ImageForm::Detect;
    } else if (wrenn::http::is_media_type(type->value(), "application/octet-stream")) {
        upload.form = ImageForm::Raw;
    } else if (wrenn::http::is_media_type(type->value(), "application/zstd")) {
        upload.form = ImageForm::Zstd;
    } else {
        upload.form = ImageForm::Stream;
    }
    if (const auto length = request->find(http::field::content_length); length != request->end()) {
        try {
            upload.content_length = std::stoull(std::string(length->value()));
        } catch (const std::exception&) {
            // The transport parsed it already; an unparsable one never reaches here.
        }
    }
    auto reader = std::make_shared<wrenn::http::BodyReader>(std::move(body));
    manager_.upload_template(
        std::move(upload), [reader](std::span<std::byte> buffer) { return reader->read(buffer); },
        [request, respond, reader](Result<TemplateInfo, Failure> out) {
            reader->close();  // a refusal before the end: the server stops reading the body
            if (!out) {
                return respond(failure_response(*request, out.error()));
            }
            respond(json_response(*request, out->existed ? 200 : 201, uploaded_json(out.value())));
        });
}

void Api::import_sandbox(std::shared_ptr<HttpRequest> request, wrenn::http::BodyReader body,
                         Respond respond) {
    const auto id = query_param(request->target(), "id");
    if (!id || id->empty() || !is_valid_name(*id)) {
        // The body reader goes with this call: the server stops reading the body.
        return respond(json_error(
            *request, 400, "invalid_request",
            "POST /sandboxes/import needs ?id=ID, an id matching " + std::string(kNameRule)));
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
