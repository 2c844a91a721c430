#include <boost/json.hpp>
#include <catch2/catch.hpp>
#include <fstream>
#include <optional>

#include "agent/cli/cli.hpp"
#include "agent/platform/space.hpp"
#include "agent_fixture.hpp"

using namespace wrenn::agent;
using namespace wrenn::agent::testing;
namespace http = boost::beast::http;

namespace {

constexpr std::uint64_t MiB = 1ull << 20;
constexpr std::uint64_t GiB = 1ull << 30;

// Counts what the watcher asks of the sandboxes.
struct FakeActions : SpaceActions {
    std::size_t suspend_calls = 0;
    std::size_t resume_calls = 0;
    std::size_t running = 3;
    std::size_t suspended = 0;
    std::size_t suspend_for_space() override {
        ++suspend_calls;
        return std::exchange(suspended, running) == running ? 0 : running;
    }
    std::size_t resume_after_space() override {
        ++resume_calls;
        return std::exchange(suspended, 0);
    }
    std::size_t suspended_for_space() const override { return suspended; }
};

SpacePolicy small_policy() {
    SpacePolicy policy;
    policy.min_free = SpaceThreshold{100 * MiB, 0};
    policy.critical_free = SpaceThreshold{40 * MiB, 0};
    return policy;
}

}  // namespace

TEST_CASE("space thresholds parse sizes, shares and both", "[space]") {
    auto parse = [](std::string_view text) {
        auto t = parse_space_threshold(text);
        REQUIRE(t.ok());
        return *t;
    };
    CHECK(parse("0").disabled());
    CHECK(parse("1073741824").bytes == GiB);
    CHECK(parse("512MiB").bytes == 512 * MiB);
    CHECK(parse("2G").bytes == 2 * GiB);
    CHECK(parse("64k").bytes == 64 * 1024);
    CHECK(parse("5%").percent == 5);
    CHECK(parse("0.5%").percent == 0.5);
    const SpaceThreshold both = parse("1GiB,5%");
    CHECK(both.bytes == GiB);
    CHECK(both.percent == 5);
    CHECK(both.to_string() == "1GiB,5%");
    CHECK(parse("256MiB").to_string() == "256MiB");

    for (std::string_view bad : {"", "x", "1Q", "101%", "-1%", "1G,2G", "5%,6%", "1G,", "%"}) {
        INFO(bad);
        auto t = parse_space_threshold(bad);
        REQUIRE_FALSE(t.ok());
        CHECK(t.error().message().find("a size such as 2GiB") != std::string::npos);
    }
}

TEST_CASE("a threshold is the larger of its size and its share", "[space]") {
    const SpaceThreshold t{GiB, 5};
    CHECK(t.resolve(10 * GiB) == GiB);       // 5% is 512 MiB
    CHECK(t.resolve(100 * GiB) == 5 * GiB);  // 5% is 5 GiB
    CHECK(SpaceThreshold{}.resolve(100 * GiB) == 0);
}

TEST_CASE("the space level has hysteresis-free bounds and the poll speeds up near them",
          "[space]") {
    const SpacePolicy policy = small_policy();
    CHECK(policy.level(FreeSpace{500 * MiB, GiB}) == SpaceLevel::Ok);
    CHECK(policy.level(FreeSpace{100 * MiB, GiB}) == SpaceLevel::Ok);  // at min-free: ok
    CHECK(policy.level(FreeSpace{99 * MiB, GiB}) == SpaceLevel::Low);
    CHECK(policy.level(FreeSpace{40 * MiB, GiB}) == SpaceLevel::Low);
    CHECK(policy.level(FreeSpace{39 * MiB, GiB}) == SpaceLevel::Critical);
    CHECK(policy.poll_interval(FreeSpace{500 * MiB, GiB}) == policy.slow_poll);
    CHECK(policy.poll_interval(FreeSpace{199 * MiB, GiB}) == policy.fast_poll);
    CHECK(policy.fast_poll <= std::chrono::milliseconds(100));
}

TEST_CASE("critical-free must sit below min-free", "[space]") {
    CHECK(SpacePolicy{}.check().empty());  // the defaults
    SpacePolicy inverted = small_policy();
    inverted.critical_free = SpaceThreshold{200 * MiB, 0};
    CHECK(inverted.check().find("must be below --min-free") != std::string::npos);
    // 10% is above 1 GiB on a large filesystem.
    SpacePolicy crossing;
    crossing.critical_free = SpaceThreshold{0, 10};
    CHECK_FALSE(crossing.check().empty());
    SpacePolicy no_min = small_policy();
    no_min.min_free = {};
    CHECK(no_min.check().find("needs --min-free") != std::string::npos);
}

TEST_CASE("the command line takes --min-free and --critical-free", "[space][cli]") {
    auto serve = [](std::vector<std::string> args) {
        Command c = parse_command_line(args);
        REQUIRE(std::holds_alternative<ServeOptions>(c));
        return std::get<ServeOptions>(c);
    };
    const ServeOptions defaults = serve({});
    CHECK(defaults.space.min_free.to_string() == "1GiB,5%");
    CHECK(defaults.space.critical_free.to_string() == "256MiB,1%");
    const ServeOptions small = serve({"--min-free", "64MiB", "--critical-free", "32MiB"});
    CHECK(small.space.min_free.bytes == 64 * MiB);
    CHECK(small.space.critical_free.bytes == 32 * MiB);
    CHECK(serve({"--min-free", "0"}).space.critical_free.disabled());

    auto refused = [](std::vector<std::string> args) {
        Command c = parse_command_line(args);
        REQUIRE(std::holds_alternative<PrintAndExit>(c));
        CHECK(std::get<PrintAndExit>(c).status == 2);
        return std::get<PrintAndExit>(c).text;
    };
    CHECK(refused({"--min-free", "lots"}).find("--min-free") != std::string::npos);
    CHECK(refused({"--min-free", "64MiB", "--critical-free", "64MiB"})
              .find("must be below --min-free") != std::string::npos);
}

TEST_CASE("the watcher suspends below critical, holds between, resumes at min-free", "[space]") {
    FakePlatform platform;
    FakeActions actions;
    SpaceWatcher watcher(platform, "/state", small_policy(), actions);

    platform.space = FreeSpace{500 * MiB, GiB};
    watcher.poll_once();
    CHECK(actions.suspend_calls == 0);
    CHECK_FALSE(watcher.status().degraded());
    CHECK_FALSE(watcher.refuse_new_work().has_value());

    platform.space = FreeSpace{60 * MiB, GiB};  // low
    watcher.poll_once();
    CHECK(actions.suspend_calls == 0);
    CHECK(watcher.status().level == SpaceLevel::Low);
    CHECK(watcher.status().degraded());
    auto refused = watcher.refuse_new_work();
    REQUIRE(refused.has_value());
    CHECK(refused->find("60 MiB free on /state") != std::string::npos);
    CHECK(refused->find("below --min-free 100 MiB") != std::string::npos);

    platform.space = FreeSpace{30 * MiB, GiB};  // critical: suspend, and again on every poll
    watcher.poll_once();
    watcher.poll_once();
    CHECK(actions.suspend_calls == 2);
    CHECK(actions.suspended == 3);
    CHECK(watcher.status().suspensions == 1);
    CHECK(watcher.status().suspended == 3);

    platform.space = FreeSpace{80 * MiB, GiB};  // back to low: still suspended
    watcher.poll_once();
    CHECK(actions.resume_calls == 0);
    CHECK(actions.suspended == 3);

    platform.space = FreeSpace{120 * MiB, GiB};  // above min-free: resumed
    watcher.poll_once();
    CHECK(actions.resume_calls == 1);
    CHECK(actions.suspended == 0);
    CHECK_FALSE(watcher.status().degraded());
    watcher.poll_once();
    CHECK(actions.resume_calls == 1);  // nothing left to resume

    platform.space = FreeSpace{10 * MiB, GiB};  // a second time counts
    watcher.poll_once();
    CHECK(watcher.status().suspensions == 2);
}

TEST_CASE("the watcher neither refuses nor suspends when statvfs fails or watching is off",
          "[space]") {
    FakePlatform platform;
    FakeActions actions;
    SpaceWatcher watcher(platform, "/state", small_policy(), actions);
    platform.fail_space_errno = EIO;
    watcher.poll_once();
    CHECK(actions.suspend_calls == 0);
    CHECK_FALSE(watcher.status().known);
    CHECK(watcher.status().error.find("statvfs /state") != std::string::npos);
    CHECK_FALSE(watcher.refuse_new_work().has_value());

    SpacePolicy off;
    off.min_free = {};
    off.critical_free = {};
    platform.fail_space_errno = 0;
    platform.space = FreeSpace{0, GiB};
    SpaceWatcher unwatched(platform, "/state", off, actions);
    CHECK_FALSE(unwatched.refuse_new_work().has_value());
}

namespace {

// An agent over the fake kernel with its space watched as serve() does it.
struct SpaceFixture : AgentFixture {
    std::unique_ptr<SpaceWatcher> watcher;
    SpaceFixture() { watch(); }
    ~SpaceFixture() { watcher.reset(); }
    void watch() {
        watcher =
            std::make_unique<SpaceWatcher>(platform, store->state_dir(), small_policy(), *manager);
        manager->set_space_watcher(watcher.get());
    }
    void set_free(std::uint64_t bytes) {
        std::lock_guard lock(platform.mu);
        platform.space = FreeSpace{bytes, GiB};
    }
};

}  // namespace

TEST_CASE("below critical every running sandbox is suspended and shows it; space back resumes",
          "[space][agent]") {
    SpaceFixture f;
    REQUIRE(f.create("sb1").ok());
    REQUIRE(f.create("sb2").ok());
    REQUIRE(f.create("sb3").ok());
    REQUIRE(f.pause("sb3").ok());

    f.set_free(30 * MiB);
    f.watcher->poll_once();
    CHECK(f.platform.suspended == std::set<std::string>{"sb1", "sb2"});
    CHECK(f.manager->suspended_for_space() == 2);
    REQUIRE(f.manager->get("sb1"));
    CHECK(f.manager->get("sb1")->io_suspended_for_space);
    CHECK(api_view(*f.manager->get("sb1")).at("io") == "suspended_no_space");
    CHECK_FALSE(api_view(*f.manager->get("sb3")).contains("io"));  // paused: no device

    // No new work: create, resume (and flatten onto the same filesystem) answer 507.
    auto created = f.create("sb4");
    REQUIRE_FALSE(created.ok());
    CHECK(created.error().kind == FailureKind::InsufficientStorage);
    CHECK(failure_http_status(created.error().kind) == 507);
    CHECK(created.error().error.message().find("below --min-free") != std::string::npos);
    CHECK_FALSE(f.manager->get("sb4"));
    auto resumed = f.resume("sb3");
    REQUIRE_FALSE(resumed.ok());
    CHECK(resumed.error().kind == FailureKind::InsufficientStorage);

    // Pause and destroy of a suspended sandbox work (and destroy is how space comes back).
    REQUIRE(f.pause("sb2").ok());
    CHECK(f.platform.devices.count("sb2") == 0);
    CHECK(f.manager->suspended_for_space() == 1);

    f.set_free(120 * MiB);
    f.watcher->poll_once();
    CHECK(f.platform.suspended.empty());
    CHECK(f.manager->suspended_for_space() == 0);
    CHECK(api_view(*f.manager->get("sb1")).at("io") == "active");
    REQUIRE(f.resume("sb2").ok());
    CHECK(api_view(*f.manager->get("sb2")).at("io") == "active");
}

TEST_CASE("a device created while critical is suspended on the next poll", "[space][agent]") {
    SpaceFixture f;
    REQUIRE(f.create("sb1").ok());
    f.set_free(30 * MiB);
    f.watcher->poll_once();
    REQUIRE(f.platform.suspended == std::set<std::string>{"sb1"});
    // A create that got past its check just before the drop: its device is new and active.
    f.manager->set_space_watcher(nullptr);
    REQUIRE(f.create("sb2").ok());
    f.manager->set_space_watcher(f.watcher.get());
    f.watcher->poll_once();
    CHECK(f.platform.suspended == std::set<std::string>{"sb1", "sb2"});
}

TEST_CASE("a restart finds devices suspended for space and resumes them once there is room",
          "[space][agent][recovery]") {
    SpaceFixture f;
    REQUIRE(f.create("sb1").ok());
    REQUIRE(f.create("sb2").ok());
    f.set_free(30 * MiB);
    f.watcher->poll_once();
    REQUIRE(f.platform.suspended.size() == 2);

    // kill -9 and start again while space is still short: the devices stay suspended.
    f.watcher.reset();
    auto report = f.restart();
    f.watch();
    CHECK(report.adopted == 2);
    CHECK(report.suspended_found == 2);
    CHECK(f.manager->get("sb1")->io_suspended_for_space);
    f.watcher->poll_once();
    CHECK(f.platform.suspended.size() == 2);

    f.set_free(500 * MiB);
    f.watcher->poll_once();
    CHECK(f.platform.suspended.empty());
    CHECK_FALSE(f.manager->get("sb2")->io_suspended_for_space);
}

TEST_CASE("/healthz says degraded and /metrics shows the space", "[space][api]") {
    SpaceFixture f;
    ApiOptions options;
    SpaceWatcher* watcher = f.watcher.get();
    options.space = [watcher] { return watcher->status(); };
    Api api(*f.manager, f.platform, f.metrics, options);
    auto call = [&](std::string target) {
        HttpRequest req{http::verb::get, target, 11};
        auto answer = std::make_shared<std::promise<HttpResponse>>();
        auto future = answer->get_future();
        api.handle(std::move(req), [answer](wrenn::http::Reply res) {
            answer->set_value(std::move(res.response()));
        });
        return future.get();
    };
    REQUIRE(f.create("sb1").ok());
    f.watcher->poll_once();
    auto health = boost::json::parse(call("/healthz").body()).as_object();
    CHECK(health.at("status") == "ok");
    CHECK(health.at("space").at("level") == "ok");

    f.set_free(30 * MiB);
    f.watcher->poll_once();
    auto res = call("/healthz");
    CHECK(res.result_int() == 200);
    health = boost::json::parse(res.body()).as_object();
    CHECK(health.at("status") == "degraded");
    CHECK(health.at("space").at("level") == "critical");
    CHECK(health.at("space").at("suspended_sandboxes") == 1);
    CHECK(health.at("space").at("free_bytes") == 30 * MiB);

    const std::string metrics = call("/metrics").body();
    CHECK(metrics.find("wrenn_state_fs_free_bytes " + std::to_string(30 * MiB) + "\n") !=
          std::string::npos);
    CHECK(metrics.find("wrenn_sandboxes_suspended_for_space 1\n") != std::string::npos);
    CHECK(metrics.find("wrenn_space_suspensions_total 1\n") != std::string::npos);
    CHECK(metrics.find("wrenn_sandbox_cow_disk_bytes{sandbox=\"sb1\"} 0\n") != std::string::npos);
    CHECK(metrics.find("wrenn_sandboxes_io_suspended{reason=\"space\"} 1\n") != std::string::npos);
    CHECK(metrics.find("wrenn_sandboxes_io_suspended{reason=\"fork\"} 0\n") != std::string::npos);

    auto created = call("/sandboxes");  // a GET: lists, not refused
    CHECK(created.result_int() == 200);
}

TEST_CASE("with watching off, a restart resumes what an earlier agent suspended for space",
          "[space][agent][recovery]") {
    SpaceFixture f;
    REQUIRE(f.create("sb1").ok());
    f.set_free(30 * MiB);
    f.watcher->poll_once();
    REQUIRE(f.platform.suspended.size() == 1);

    f.watcher.reset();
    auto report = f.restart();
    CHECK(report.suspended_found == 1);
    SpacePolicy off;
    off.min_free = {};
    off.critical_free = {};
    SpaceWatcher unwatched(f.platform, f.store->state_dir(), off, *f.manager);
    f.manager->set_space_watcher(&unwatched);
    unwatched.start();
    CHECK(f.platform.suspended.empty());
    CHECK(f.manager->suspended_for_space() == 0);
    f.manager->set_space_watcher(nullptr);
}

TEST_CASE("reservations count against --min-free until they go", "[space]") {
    FakePlatform platform;
    platform.space = FreeSpace{110 * MiB, GiB};  // 10 MiB above --min-free
    FakeActions actions;
    SpaceWatcher watcher(platform, "/state", small_policy(), actions);
    auto first = watcher.reserve(6 * MiB);
    REQUIRE(first.ok());
    CHECK(watcher.reserved_bytes() == 6 * MiB);
    CHECK_FALSE(watcher.refuse_new_work());  // 4 MiB still above
    auto second = watcher.reserve(6 * MiB);
    REQUIRE_FALSE(second.ok());
    CHECK_THAT(second.error(), Catch::Contains("6 MiB of it held for transfers and forks") &&
                                   Catch::Contains("this one may need 6 MiB") &&
                                   Catch::Contains("less than --min-free 100 MiB"));
    { auto gone = std::move(first).value(); }
    CHECK(watcher.reserved_bytes() == 0);
    CHECK(watcher.reserve(6 * MiB).ok());
    CHECK(watcher.reserved_bytes() == 0);  // the temporary let go at once
}

TEST_CASE("concurrent forks cannot together push the disk under --min-free", "[space][agent]") {
    SpaceFixture f;
    REQUIRE(f.create("sb1").ok());
    REQUIRE(f.create("sb2").ok());
    // Each CoW holds 8 MiB of data: a copy without reflinks may take as much.
    for (const char* id : {"sb1", "sb2"}) {
        std::ofstream cow(f.store->cow_path(id), std::ios::binary | std::ios::in | std::ios::out);
        const std::string data(8 * MiB, 'x');
        cow.seekp(1 << 20);
        cow.write(data.data(), static_cast<std::streamsize>(data.size()));
    }
    f.set_free(112 * MiB);  // room above --min-free for one copy, not two
    auto fork = [&](const std::string& from, const std::string& to) {
        return f.wait<Sandbox>([&](auto cb) { f.manager->fork(from, to, cb); });
    };
    std::optional<wrenn::Result<Sandbox, Failure>> second;
    f.platform.on_copy = [&] { second = fork("sb2", "kid2"); };  // while sb1's copy runs
    REQUIRE(fork("sb1", "kid1").ok());
    REQUIRE(second);
    REQUIRE_FALSE(second->ok());
    CHECK(second->error().kind == FailureKind::InsufficientStorage);
    CHECK_THAT(second->error().error.message(),
               Catch::Contains("held for transfers and forks in flight"));
    CHECK_FALSE(f.manager->get("kid2"));
    // Once the first fork is done its room is free again.
    CHECK(f.watcher->reserved_bytes() == 0);
}
