// One owner of suspension per sandbox (table/suspensions.hpp): fork, export and the space
// watcher hold a device suspended for their reasons, and it runs again only when the last lets
// go; a resume that fails is retried and shown.
#include <boost/json.hpp>
#include <catch2/catch.hpp>
#include <chrono>
#include <future>
#include <thread>

#include "agent/api/api.hpp"
#include "agent_fixture.hpp"

using namespace wrenn::agent;
using namespace wrenn::agent::testing;
using wrenn::Result;

namespace {

struct SuspendFixture : AgentFixture {
    Api api{*manager, platform, metrics};
    HttpResponse get(std::string target) {
        HttpRequest req{boost::beast::http::verb::get, target, 11};
        auto answer = std::make_shared<std::promise<HttpResponse>>();
        auto future = answer->get_future();
        api.handle(std::move(req), [answer](wrenn::http::Reply res) {
            answer->set_value(std::move(res.response()));
        });
        return future.get();
    }
    Result<Sandbox, Failure> fork(const std::string& id, const std::string& new_id) {
        return wait<Sandbox>([&](auto cb) { manager->fork(id, new_id, cb); });
    }
    bool device_suspended(const std::string& id) {
        std::lock_guard lock(platform.mu);
        return platform.suspended.count(id) != 0;
    }
    std::vector<std::string> held_by(const std::string& id) {
        return manager->get(id)->io_suspended_by;
    }
};

}  // namespace

TEST_CASE("the space watcher cannot resume a device in the middle of a fork's copy",
          "[agent][suspend]") {
    SuspendFixture f;
    REQUIRE(f.create("src").ok());
    bool suspended_mid_copy = false;
    std::vector<std::string> holders_mid_copy;
    // Space runs short and comes back while the fork copies: the watcher's resume must not let
    // the fork's suspension go, or the copy would not be a point in time.
    f.platform.on_copy = [&] {
        CHECK(f.manager->suspend_for_space() == 1);
        CHECK(f.manager->resume_after_space() == 1);
        suspended_mid_copy = f.device_suspended("src");
        holders_mid_copy = f.held_by("src");
    };
    REQUIRE(f.fork("src", "kid").ok());
    CHECK(suspended_mid_copy);
    CHECK(holders_mid_copy == std::vector<std::string>{"fork"});
    CHECK_FALSE(f.device_suspended("src"));  // the fork, the last holder, resumed it
    CHECK(api_view(*f.manager->get("src")).at("io") == "active");
}

TEST_CASE("a suspension for space that comes during a fork's copy outlives the fork",
          "[agent][suspend]") {
    SuspendFixture f;
    REQUIRE(f.create("src").ok());
    f.platform.on_copy = [&] { CHECK(f.manager->suspend_for_space() == 1); };
    REQUIRE(f.fork("src", "kid").ok());
    // The fork let go; space still holds it, and says so.
    CHECK(f.device_suspended("src"));
    CHECK(f.held_by("src") == std::vector<std::string>{"space"});
    auto view = api_view(*f.manager->get("src"));
    CHECK(view.at("io") == "suspended_no_space");
    CHECK(view.at("io_suspended_by").as_array().size() == 1);
    CHECK(f.manager->suspended_for_space() == 1);
    CHECK(f.manager->resume_after_space() == 1);
    CHECK_FALSE(f.device_suspended("src"));
    CHECK(api_view(*f.manager->get("src")).at("io") == "active");
}

TEST_CASE("a resume that keeps failing is shown, counted and retried until it works",
          "[agent][suspend]") {
    SuspendFixture f;
    REQUIRE(f.create("src").ok());
    f.platform.fail_resume_errno = EIO;
    f.platform.fail_resumes = 2;  // the fork's resume and its retry, then the background's first
    auto forked = f.fork("src", "kid");
    REQUIRE_FALSE(forked.ok());
    CHECK_THAT(forked.error().error.message(), Catch::Contains("could not be resumed"));
    CHECK(f.device_suspended("src"));
    auto view = api_view(*f.manager->get("src"));
    CHECK(view.at("io") == "suspended");
    CHECK_THAT(std::string(view.at("io_error").as_string()),
               Catch::Contains("resume wrenn-src") && Catch::Contains("retries"));
    CHECK(f.manager->resumes_failing() == 1);
    auto health = boost::json::parse(f.get("/healthz").body()).as_object();
    CHECK(health.at("status") == "degraded");
    CHECK(health.at("io").at("resumes_failing") == 1);
    CHECK(f.get("/metrics").body().find("wrenn_sandboxes_io_resume_failing 1\n") !=
          std::string::npos);
    // The background retries every second; the third attempt works.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (f.device_suspended("src") && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    CHECK_FALSE(f.device_suspended("src"));
    CHECK(f.manager->resumes_failing() == 0);
    view = api_view(*f.manager->get("src"));
    CHECK(view.at("io") == "active");
    CHECK_FALSE(view.contains("io_error"));
    CHECK(boost::json::parse(f.get("/healthz").body()).at("status") == "ok");
}

TEST_CASE("a pause drops every hold: its device is gone", "[agent][suspend]") {
    SuspendFixture f;
    REQUIRE(f.create("src").ok());
    CHECK(f.manager->suspend_for_space() == 1);
    REQUIRE(f.pause("src").ok());
    CHECK(f.manager->suspended_for_space() == 0);
    CHECK(f.manager->get("src")->io_suspended_by.empty());
    CHECK(f.manager->resume_after_space() == 0);
}
