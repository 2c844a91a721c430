#include <boost/json.hpp>
#include <catch2/catch.hpp>
#include <cerrno>

#include "agent/platform/linux_platform.hpp"
#include "agent_fixture.hpp"

using namespace wrenn::agent;
using namespace wrenn::agent::testing;
namespace http = boost::beast::http;
namespace json = boost::json;

namespace {

struct ApiFixture : AgentFixture {
    Api api{*manager, platform, metrics};

    HttpResponse call(http::verb verb, std::string target, std::string body = {}) {
        HttpRequest req{verb, target, 11};
        req.body() = std::move(body);
        req.prepare_payload();
        auto promise = std::make_shared<std::promise<HttpResponse>>();
        auto future = promise->get_future();
        api.handle(std::move(req), [promise](wrenn::http::Reply res) {
            promise->set_value(std::move(res.response()));
        });
        return future.get();
    }
    static json::value body_of(const HttpResponse& res) { return json::parse(res.body()); }
    static std::string error_code(const HttpResponse& res) {
        return std::string(body_of(res).at("error").at("code").as_string());
    }
    static std::string error_message(const HttpResponse& res) {
        return std::string(body_of(res).at("error").at("message").as_string());
    }
};

}  // namespace

TEST_CASE("POST /sandboxes creates and answers 201 with the sandbox", "[api]") {
    ApiFixture f;
    auto res = f.call(http::verb::post, "/sandboxes", R"({"id": "sb1", "template": "base"})");
    REQUIRE(res.result_int() == 201);
    auto body = ApiFixture::body_of(res).as_object();
    CHECK(body.at("id").as_string() == "sb1");
    CHECK(body.at("state").as_string() == "running");
    CHECK(body.at("device").as_string() == "/dev/mapper/wrenn-sb1");
    CHECK(body.at("template").as_string() == "base");
    CHECK(body.at("origin").at("type").as_string() == "loop");
    CHECK(body.at("origin").at("device").as_string() == "/dev/loop7");
    CHECK(body.at("cow").at("size_bytes").to_number<std::uint64_t>() > 0);
    CHECK(body.contains("created_at"));
    CHECK(res[http::field::content_type] == "application/json");
}

TEST_CASE("every create error has its status and code", "[api]") {
    ApiFixture f;
    REQUIRE(
        f.call(http::verb::post, "/sandboxes", R"({"id":"sb1","template":"base"})").result_int() ==
        201);
    auto dup = f.call(http::verb::post, "/sandboxes", R"({"id":"sb1","template":"base"})");
    CHECK(dup.result_int() == 409);
    CHECK(ApiFixture::error_code(dup) == "already_exists");
    auto missing = f.call(http::verb::post, "/sandboxes", R"({"id":"sb2","template":"nope"})");
    CHECK(missing.result_int() == 404);
    CHECK(ApiFixture::error_code(missing) == "template_not_found");
    auto unknown =
        f.call(http::verb::post, "/sandboxes", R"({"id":"sb3","template":"base","size":1})");
    CHECK(unknown.result_int() == 400);
    CHECK(ApiFixture::error_code(unknown) == "invalid_request");
    CHECK_THAT(ApiFixture::error_message(unknown), Catch::Contains("'size'"));
    auto malformed = f.call(http::verb::post, "/sandboxes", R"({"id":)");
    CHECK(malformed.result_int() == 400);
    auto wrong_type = f.call(http::verb::post, "/sandboxes", R"({"id":7,"template":"base"})");
    CHECK(wrong_type.result_int() == 400);
    CHECK_THAT(ApiFixture::error_message(wrong_type), Catch::Contains("'id'"));
    auto traversal =
        f.call(http::verb::post, "/sandboxes", R"({"id":"../../etc","template":"base"})");
    CHECK(traversal.result_int() == 400);
    auto tmpl_traversal =
        f.call(http::verb::post, "/sandboxes", R"({"template":"../../etc/passwd"})");
    CHECK(tmpl_traversal.result_int() == 400);
    auto not_object = f.call(http::verb::post, "/sandboxes", R"([1,2])");
    CHECK(not_object.result_int() == 400);
    auto no_template = f.call(http::verb::post, "/sandboxes", R"({"id":"x"})");
    CHECK(no_template.result_int() == 400);
    CHECK_THAT(ApiFixture::error_message(no_template), Catch::Contains("'template'"));
    f.platform.kernel.device_mapper = false;
    f.platform.kernel.device_mapper_reason = "the kernel has no device-mapper";
    auto unavailable = f.call(http::verb::post, "/sandboxes", R"({"template":"base"})");
    CHECK(unavailable.result_int() == 503);
    CHECK(ApiFixture::error_code(unavailable) == "unavailable");
}

TEST_CASE("a TCMU origin is parsed and validated", "[api]") {
    ApiFixture f;
    auto res = f.call(
        http::verb::post, "/sandboxes",
        R"({"id":"t1","origin":{"type":"tcmu","config":"/etc/obd/c.json","size_bytes":1048576}})");
    REQUIRE(res.result_int() == 201);
    auto body = ApiFixture::body_of(res);
    CHECK(body.at("origin").at("type").as_string() == "tcmu");
    CHECK(body.at("origin").at("handler").as_string() == "overlaybd");
    CHECK(body.at("origin").at("device").as_string() == "/dev/sda");
    CHECK(
        f.call(http::verb::post, "/sandboxes", R"({"origin":{"type":"tcmu","config":"rel.json"}})")
            .result_int() == 400);
    CHECK(f.call(http::verb::post, "/sandboxes",
                 R"({"origin":{"type":"tcmu","config":"/c","size_bytes":-1}})")
              .result_int() == 400);
    CHECK(
        f.call(http::verb::post, "/sandboxes", R"({"origin":{"type":"tcmu","config":"/c","x":1}})")
            .result_int() == 400);
    CHECK(f.call(http::verb::post, "/sandboxes",
                 R"({"template":"base","origin":{"type":"tcmu","config":"/c"}})")
              .result_int() == 400);
}

TEST_CASE("GET, pause, resume and DELETE of a sandbox", "[api]") {
    ApiFixture f;
    REQUIRE(
        f.call(http::verb::post, "/sandboxes", R"({"id":"sb1","template":"base"})").result_int() ==
        201);
    auto got = f.call(http::verb::get, "/sandboxes/sb1");
    REQUIRE(got.result_int() == 200);
    CHECK(ApiFixture::body_of(got).at("cow").at("allocated_bytes").to_number<std::uint64_t>() ==
          8192u);
    auto list = f.call(http::verb::get, "/sandboxes");
    REQUIRE(list.result_int() == 200);
    CHECK(ApiFixture::body_of(list).at("sandboxes").as_array().size() == 1);
    auto paused = f.call(http::verb::post, "/sandboxes/sb1/pause");
    REQUIRE(paused.result_int() == 200);
    CHECK(ApiFixture::body_of(paused).at("state").as_string() == "paused");
    auto twice = f.call(http::verb::post, "/sandboxes/sb1/pause");
    CHECK(twice.result_int() == 409);
    CHECK(ApiFixture::error_code(twice) == "invalid_state");
    auto resumed = f.call(http::verb::post, "/sandboxes/sb1/resume", "{}");
    REQUIRE(resumed.result_int() == 200);
    CHECK(ApiFixture::body_of(resumed).at("state").as_string() == "running");
    CHECK(f.call(http::verb::post, "/sandboxes/sb1/pause", R"({"force":true})").result_int() ==
          400);
    auto deleted = f.call(http::verb::delete_, "/sandboxes/sb1");
    CHECK(deleted.result_int() == 204);
    CHECK(deleted.body().empty());
    auto gone = f.call(http::verb::get, "/sandboxes/sb1");
    CHECK(gone.result_int() == 404);
    CHECK(ApiFixture::error_code(gone) == "not_found");
}

TEST_CASE("a busy device at pause is a 409 device_busy and the sandbox stays running", "[api]") {
    ApiFixture f;
    REQUIRE(
        f.call(http::verb::post, "/sandboxes", R"({"id":"sb1","template":"base"})").result_int() ==
        201);
    f.platform.fail_remove_errno = EBUSY;
    auto res = f.call(http::verb::post, "/sandboxes/sb1/pause");
    CHECK(res.result_int() == 409);
    CHECK(ApiFixture::error_code(res) == "device_busy");
    auto got = ApiFixture::body_of(f.call(http::verb::get, "/sandboxes/sb1"));
    CHECK(got.at("state").as_string() == "running");
    CHECK_THAT(std::string(got.at("last_error").as_string()), Catch::Contains("device busy"));
    f.platform.fail_remove_errno = EIO;
    CHECK(f.call(http::verb::post, "/sandboxes/sb1/pause").result_int() == 500);
}

TEST_CASE("resume of an invalidated CoW is a 409 snapshot_invalid", "[api]") {
    ApiFixture f;
    REQUIRE(
        f.call(http::verb::post, "/sandboxes", R"({"id":"sb1","template":"base"})").result_int() ==
        201);
    REQUIRE(f.call(http::verb::post, "/sandboxes/sb1/pause").result_int() == 200);
    f.platform.cow_valid = false;
    auto res = f.call(http::verb::post, "/sandboxes/sb1/resume");
    CHECK(res.result_int() == 409);
    CHECK(ApiFixture::error_code(res) == "snapshot_invalid");
}

TEST_CASE("flatten answers 201, 409 invalid_state and 409 template_exists", "[api]") {
    ApiFixture f;
    REQUIRE(
        f.call(http::verb::post, "/sandboxes", R"({"id":"sb1","template":"base"})").result_int() ==
        201);
    auto running = f.call(http::verb::post, "/sandboxes/sb1/flatten", R"({"template":"gold"})");
    CHECK(running.result_int() == 409);
    CHECK(ApiFixture::error_code(running) == "invalid_state");
    REQUIRE(f.call(http::verb::post, "/sandboxes/sb1/pause").result_int() == 200);
    auto exists = f.call(http::verb::post, "/sandboxes/sb1/flatten", R"({"template":"base"})");
    CHECK(exists.result_int() == 409);
    CHECK(ApiFixture::error_code(exists) == "template_exists");
    auto made = f.call(http::verb::post, "/sandboxes/sb1/flatten", R"({"template":"gold"})");
    REQUIRE(made.result_int() == 201);
    CHECK(ApiFixture::body_of(made).at("template").as_string() == "gold");
    CHECK(
        f.call(http::verb::post, "/sandboxes/sb1/flatten", R"({"template":"../x"})").result_int() ==
        400);
    CHECK(f.call(http::verb::post, "/sandboxes/sb1/flatten", "").result_int() == 400);
}

TEST_CASE("unknown routes are 404, wrong methods 405 with Allow", "[api]") {
    ApiFixture f;
    CHECK(f.call(http::verb::get, "/nope").result_int() == 404);
    CHECK(f.call(http::verb::get, "/").result_int() == 404);
    CHECK(f.call(http::verb::post, "/sandboxes/sb1/explode").result_int() == 404);
    CHECK(f.call(http::verb::get, "/sandboxes/a/b/c/d").result_int() == 404);
    auto put = f.call(http::verb::put, "/sandboxes");
    CHECK(put.result_int() == 405);
    CHECK(put[http::field::allow] == "GET, POST");
    CHECK(f.call(http::verb::get, "/sandboxes/sb1/pause").result_int() == 405);
    CHECK(f.call(http::verb::post, "/healthz").result_int() == 405);
    CHECK(f.call(http::verb::get, "/sandboxes/..%2f..%2fetc").result_int() == 400);
    CHECK(f.call(http::verb::get, "/sandboxes/nope").result_int() == 404);
}

TEST_CASE("healthz reports what the kernel offers", "[api]") {
    ApiFixture f;
    auto ok = f.call(http::verb::get, "/healthz");
    CHECK(ok.result_int() == 200);
    CHECK(ApiFixture::body_of(ok).at("status").as_string() == "ok");
    f.platform.kernel.device_mapper = false;
    f.platform.kernel.device_mapper_reason = "no device-mapper";
    auto down = f.call(http::verb::get, "/healthz");
    CHECK(down.result_int() == 503);
    CHECK(ApiFixture::body_of(down).at("device_mapper").at("reason").as_string() ==
          "no device-mapper");
}

TEST_CASE("an explicit empty id is a 400; only an absent id asks for a generated one", "[api]") {
    ApiFixture f;
    auto empty = f.call(http::verb::post, "/sandboxes", R"({"id": "", "template": "base"})");
    CHECK(empty.result_int() == 400);
    CHECK(ApiFixture::error_code(empty) == "invalid_request");
    CHECK_THAT(ApiFixture::error_message(empty), Catch::Contains("'id' is empty"));
    CHECK(f.manager->list().empty());
    auto absent = f.call(http::verb::post, "/sandboxes", R"({"template": "base"})");
    REQUIRE(absent.result_int() == 201);
    CHECK_FALSE(ApiFixture::body_of(absent).at("id").as_string().empty());
}

TEST_CASE("healthz and metrics show how the API is served", "[api]") {
    AgentFixture base;
    ApiOptions options;
    options.insecure_tcp = true;
    options.connections = [] { return ConnectionCounts{7, 42}; };
    Api api(*base.manager, base.platform, base.metrics, options);
    auto call = [&](std::string target) {
        HttpRequest req{http::verb::get, target, 11};
        std::promise<HttpResponse> promise;
        auto future = promise.get_future();
        api.handle(std::move(req), [&promise](wrenn::http::Reply res) {
            promise.set_value(std::move(res.response()));
        });
        return future.get();
    };
    auto health = json::parse(call("/healthz").body());
    CHECK(health.at("insecure_tcp").as_bool());
    CHECK_THAT(std::string(health.at("warning").as_string()), Catch::Contains("--insecure-tcp"));
    const auto metrics = call("/metrics").body();
    CHECK_THAT(metrics, Catch::Contains("wrenn_connections_open 7\n") &&
                            Catch::Contains("wrenn_connections_refused_total 42\n"));

    ApiFixture plain;
    auto secure = ApiFixture::body_of(plain.call(http::verb::get, "/healthz"));
    CHECK_FALSE(secure.at("insecure_tcp").as_bool());
    CHECK_FALSE(secure.as_object().contains("warning"));
}

TEST_CASE("templates and metrics", "[api]") {
    ApiFixture f;
    REQUIRE(
        f.call(http::verb::post, "/sandboxes", R"({"id":"sb1","template":"base"})").result_int() ==
        201);
    auto templates = ApiFixture::body_of(f.call(http::verb::get, "/templates"));
    REQUIRE(templates.at("templates").as_array().size() == 1);
    CHECK(templates.at("templates").at(0).at("name").as_string() == "base");
    CHECK(templates.at("templates").at(0).at("sandboxes").to_number<std::uint64_t>() == 1);
    CHECK(templates.at("templates").at(0).at("size_bytes").to_number<std::uint64_t>() ==
          f.platform.origin_size);
    f.platform.fail_remove_errno = EBUSY;
    (void)f.call(http::verb::post, "/sandboxes/sb1/pause");
    auto metrics = f.call(http::verb::get, "/metrics");
    REQUIRE(metrics.result_int() == 200);
    CHECK_THAT(metrics.body(), Catch::Contains("wrenn_sandboxes{state=\"running\"} 1"));
    CHECK_THAT(
        metrics.body(),
        Catch::Contains("wrenn_operation_errors_total{op=\"pause\",code=\"device_busy\"} 1"));
    CHECK_THAT(metrics.body(),
               Catch::Contains("wrenn_operation_duration_seconds_count{op=\"create\"} 1"));
    CHECK_THAT(metrics.body(), Catch::Contains("wrenn_loops_attached 1"));
}

TEST_CASE("a snapshot the kernel invalidated shows in GET and in the record after pause", "[api]") {
    ApiFixture f;
    REQUIRE(
        f.call(http::verb::post, "/sandboxes", R"({"id":"sb1","template":"base"})").result_int() ==
        201);
    CHECK(ApiFixture::body_of(f.call(http::verb::get, "/sandboxes/sb1"))
              .at("cow")
              .at("status")
              .as_string() == "active");
    f.platform.usage_state = SnapshotUsage::State::Invalid;
    auto got = ApiFixture::body_of(f.call(http::verb::get, "/sandboxes/sb1"));
    CHECK(got.at("state").as_string() == "running");
    CHECK(got.at("cow").at("status").as_string() == "invalid");
    auto paused = f.call(http::verb::post, "/sandboxes/sb1/pause");
    REQUIRE(paused.result_int() == 200);
    CHECK_THAT(std::string(ApiFixture::body_of(paused).at("last_error").as_string()),
               Catch::Contains("invalidated"));
}

TEST_CASE("a TCMU origin the allowlist refuses: 403, 400 or 503, and nothing attached", "[api]") {
    const std::string body = R"({"id":"t1","origin":{"type":"tcmu","config":"/etc/obd/c.json"}})";
    struct Case {
        int errno_value;
        unsigned status;
        std::string code;
    };
    for (const Case& c :
         {Case{EACCES, 403, "tcmu_not_allowed"}, Case{EINVAL, 400, "invalid_request"},
          Case{ENOENT, 400, "invalid_request"}, Case{ENODEV, 503, "unavailable"}}) {
        INFO(c.code);
        ApiFixture f;
        f.platform.tcmu_check_errno = c.errno_value;
        auto res = f.call(http::verb::post, "/sandboxes", body);
        CHECK(res.result_int() == c.status);
        CHECK(ApiFixture::error_code(res) == c.code);
        CHECK_THAT(ApiFixture::error_message(res), Catch::Contains("/etc/obd/c.json"));
        CHECK(f.platform.attached_ever.empty());
        CHECK(f.manager->list().empty());
    }
}

TEST_CASE("a TCMU origin whose backstore is not running: 503 backstore_unavailable", "[api]") {
    ApiFixture f;
    // tcmu::attach's ETIMEDOUT: no userspace handler took the device (or served its disk).
    f.platform.fail_acquire_errno = ETIMEDOUT;
    auto res = f.call(http::verb::post, "/sandboxes",
                      R"({"id":"t1","origin":{"type":"tcmu","config":"/etc/obd/c.json"}})");
    CHECK(res.result_int() == 503);
    CHECK(ApiFixture::error_code(res) == "backstore_unavailable");
    CHECK_THAT(ApiFixture::error_message(res),
               Catch::StartsWith("create t1: acquire /etc/obd/c.json"));
    CHECK(f.manager->list().empty());
    // The same errno from a template's loop is no backstore's fault: 500.
    f.platform.fail_acquire_errno = ETIMEDOUT;
    auto loop = f.call(http::verb::post, "/sandboxes", R"({"id":"l1","template":"base"})");
    CHECK(loop.result_int() == 500);
    CHECK(ApiFixture::error_code(loop) == "internal");
    // Resume and flatten say so too.
    REQUIRE(f.call(http::verb::post, "/sandboxes",
                   R"({"id":"t2","origin":{"type":"tcmu","config":"/etc/obd/c.json"}})")
                .result_int() == 201);
    REQUIRE(f.call(http::verb::post, "/sandboxes/t2/pause").result_int() == 200);
    f.platform.fail_acquire_errno = ETIMEDOUT;
    auto resume = f.call(http::verb::post, "/sandboxes/t2/resume");
    CHECK(resume.result_int() == 503);
    CHECK(ApiFixture::error_code(resume) == "backstore_unavailable");
    f.platform.fail_acquire_errno = ETIMEDOUT;
    auto flatten = f.call(http::verb::post, "/sandboxes/t2/flatten", R"({"template":"x"})");
    CHECK(flatten.result_int() == 503);
    CHECK(ApiFixture::error_code(flatten) == "backstore_unavailable");
}

TEST_CASE("resume and flatten of a TCMU sandbox check the allowlist again", "[api]") {
    ApiFixture f;
    REQUIRE(f.call(http::verb::post, "/sandboxes",
                   R"({"id":"t1","origin":{"type":"tcmu","config":"/etc/obd/c.json"}})")
                .result_int() == 201);
    REQUIRE(f.call(http::verb::post, "/sandboxes/t1/pause").result_int() == 200);
    f.platform.tcmu_check_errno = EACCES;  // the operator took the folder off the list
    auto resume = f.call(http::verb::post, "/sandboxes/t1/resume");
    CHECK(resume.result_int() == 403);
    CHECK(ApiFixture::error_code(resume) == "tcmu_not_allowed");
    auto flatten = f.call(http::verb::post, "/sandboxes/t1/flatten", R"({"template":"x"})");
    CHECK(flatten.result_int() == 403);
    CHECK(f.platform.origin_refs.empty());
}

TEST_CASE("the real platform refuses TCMU origins before any file is opened", "[api]") {
    // LinuxPlatform without root or configfs: the checks that need no kernel still run.
    LinuxPlatform::Options options;
    LinuxPlatform none(options);
    OriginSpec spec{OriginSpec::Type::Tcmu, "/nonexistent/obd/c.json", "overlaybd", std::nullopt,
                    std::nullopt};
    auto refused = none.check_tcmu_origin(spec);
    REQUIRE_FALSE(refused.ok());
    CHECK(refused.error().code() == EACCES);
    CHECK_THAT(refused.error().message(), Catch::Contains("--tcmu-config-dir"));

    options.tcmu_policy.config_dirs = {"/nonexistent/obd"};
    LinuxPlatform allowed(options);
    spec.handler = "file";
    CHECK(allowed.check_tcmu_origin(spec).error().code() == EACCES);
    spec.handler = "overlaybd";
    spec.path = "/nonexistent/obd/a,dev_size=1";
    CHECK(allowed.check_tcmu_origin(spec).error().code() == EINVAL);
    // Allowed by every rule that needs no file: without TCMU in the kernel the answer is ENODEV
    // (503), not ENOENT, which only opening the (missing) config could give.
    spec.path = "/nonexistent/obd/c.json";
    const int expected = allowed.support().tcmu ? ENOENT : ENODEV;
    CHECK(allowed.check_tcmu_origin(spec).error().code() == expected);
}
