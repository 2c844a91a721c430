#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>

#include "agent/cli/cli.hpp"
#include "agent_fixture.hpp"

using namespace wrenn::agent;
using wrenn::Result;
using namespace wrenn::agent::testing;

namespace {

bool exists(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0;
}

// What the sandbox "wrote": the first bytes of its CoW file.
void write_cow(const std::string& path, const std::string& text) {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.write(text.data(), static_cast<std::streamsize>(text.size()));
}
std::string read_cow(const std::string& path, std::size_t n) {
    std::ifstream f(path, std::ios::binary);
    std::string text(n, '\0');
    f.read(text.data(), static_cast<std::streamsize>(n));
    return text;
}

struct ForkFixture : AgentFixture {
    Result<Sandbox, Failure> fork(const std::string& id, const std::string& new_id) {
        return wait<Sandbox>([&](auto cb) { manager->fork(id, new_id, cb); });
    }
    // The kernel calls of one operation, from `from` on.
    std::vector<std::string> calls_since(std::size_t from) {
        std::lock_guard lock(platform.mu);
        return {platform.calls.begin() + static_cast<std::ptrdiff_t>(from), platform.calls.end()};
    }
    std::size_t mark() {
        std::lock_guard lock(platform.mu);
        return platform.calls.size();
    }
};

}  // namespace

TEST_CASE("fork of a running sandbox: suspend, copy, resume, then the child's device",
          "[agent][fork]") {
    ForkFixture f;
    REQUIRE(f.create("src").ok());
    REQUIRE_FALSE(f.recorded_digest("src").empty());  // src's record is stable from here on
    write_cow(f.store->cow_path("src"), "parent-data");
    const std::size_t start = f.mark();
    auto child = f.fork("src", "kid");
    REQUIRE(child.ok());
    CHECK(child->state == SandboxState::Running);
    CHECK(child->forked_from == "src");
    CHECK(child->device == "/dev/mapper/wrenn-kid");
    CHECK(child->origin == f.manager->get("src")->origin);
    CHECK(read_cow(f.store->cow_path("kid"), 11) == "parent-data");
    CHECK(std::filesystem::file_size(f.store->cow_path("kid")) ==
          std::filesystem::file_size(f.store->cow_path("src")));
    const auto calls = f.calls_since(start);
    const std::vector<std::string> expected = {
        "suspend src", "copy " + f.store->cow_path("src"), "resume src",
        "acquire loop:" + f.templates_dir() + "/base.img", "create kid"};
    CHECK(calls == expected);
    CHECK(f.platform.suspended.empty());
    CHECK(f.platform.origin_refs["loop:" + f.templates_dir() + "/base.img"] == 2);
    // The record carries the lineage, and a restart keeps it.
    f.restart();
    REQUIRE(f.manager->get("kid"));
    CHECK(f.manager->get("kid")->forked_from == "src");
    CHECK(api_view(*f.manager->get("kid")).at("forked_from") == "src");
    CHECK(api_view(*f.manager->get("src")).at("forked_from").is_null());
}

TEST_CASE("fork of a paused sandbox copies without touching a device", "[agent][fork]") {
    ForkFixture f;
    REQUIRE(f.create("src").ok());
    REQUIRE(f.pause("src").ok());
    const std::size_t start = f.mark();
    auto child = f.fork("src", "kid");
    REQUIRE(child.ok());
    for (const auto& call : f.calls_since(start)) {
        CHECK(call.rfind("suspend", 0) != 0);
        CHECK(call.rfind("resume", 0) != 0);
    }
    CHECK(f.manager->get("src")->state == SandboxState::Paused);
    CHECK(f.manager->get("kid")->state == SandboxState::Running);
    // A fork of a fork.
    REQUIRE(f.fork("kid", "grandkid").ok());
    CHECK(f.manager->get("grandkid")->forked_from == "kid");
    // Without an id the agent makes one.
    auto unnamed = f.fork("src", "");
    REQUIRE(unnamed.ok());
    CHECK(is_valid_name(unnamed->id));
}

TEST_CASE("fork refusals: unknown source, taken or bad id, invalid CoW", "[agent][fork]") {
    ForkFixture f;
    REQUIRE(f.create("src").ok());
    REQUIRE(f.create("other").ok());
    CHECK(f.fork("nope", "kid").error().kind == FailureKind::NotFound);
    CHECK(f.fork("src", "other").error().kind == FailureKind::AlreadyExists);
    CHECK(f.fork("src", "../x").error().kind == FailureKind::InvalidRequest);
    f.platform.usage_state = SnapshotUsage::State::Invalid;
    CHECK(f.fork("src", "kid").error().kind == FailureKind::SnapshotInvalid);
    f.platform.usage_state = SnapshotUsage::State::Active;
    REQUIRE(f.pause("src").ok());
    f.platform.cow_valid = false;
    CHECK(f.fork("src", "kid").error().kind == FailureKind::SnapshotInvalid);
    CHECK_FALSE(exists(f.store->sandbox_dir("kid")));
    CHECK_FALSE(f.manager->get("kid"));
}

TEST_CASE("a fork that fails at any step leaves nothing and the source running", "[agent][fork]") {
    ForkFixture f;
    REQUIRE(f.create("src").ok());
    const std::string refs_key = "loop:" + f.templates_dir() + "/base.img";
    auto check_clean = [&](const char* step) {
        INFO(step);
        CHECK_FALSE(f.manager->get("kid"));
        CHECK_FALSE(exists(f.store->sandbox_dir("kid")));
        CHECK(f.platform.devices.count("kid") == 0);
        CHECK(f.platform.origin_refs[refs_key] == 1);  // the source's only
        CHECK(f.platform.suspended.empty());
        CHECK(f.manager->get("src")->state == SandboxState::Running);
        CHECK(f.platform.devices.count("src") == 1);
    };
    f.platform.fail_suspend_errno = EIO;
    CHECK(f.fork("src", "kid").error().kind == FailureKind::Internal);
    check_clean("suspend");

    f.platform.fail_copy_errno = ENOSPC;
    CHECK_FALSE(f.fork("src", "kid").ok());
    check_clean("copy");

    f.platform.fail_copy_errno = ETIMEDOUT;
    auto slow = f.fork("src", "kid");
    REQUIRE_FALSE(slow.ok());
    CHECK(slow.error().kind == FailureKind::Unavailable);
    CHECK_THAT(slow.error().error.message(), Catch::Contains("--fork-max-stall"));
    check_clean("copy past --fork-max-stall");

    f.platform.fail_resume_errno = EIO;  // the first resume fails, the retry works
    REQUIRE(f.fork("src", "kid").ok());
    CHECK(f.platform.suspended.empty());
    REQUIRE(f.destroy("kid").ok());

    f.platform.fail_acquire_errno = EIO;
    CHECK_FALSE(f.fork("src", "kid").ok());
    check_clean("acquire");

    f.platform.fail_create_errno = EINVAL;
    CHECK_FALSE(f.fork("src", "kid").ok());
    check_clean("create");
}

TEST_CASE("a kill during a fork's copy: the restart removes the half-made CoW with the folder",
          "[agent][fork]") {
    ForkFixture f;
    REQUIRE(f.create("src").ok());
    // Killed while copying: the child's folder holds only the copy under its temporary name.
    REQUIRE(f.store->create_sandbox_dir("kid").ok());
    const std::string temp = f.store->cow_path("kid") + ".tmp-Ab3xYz";
    std::ofstream(temp) << "half a copy";
    auto report = f.restart();
    CHECK(report.unfinished_removed == 1);
    CHECK(report.problems.empty());
    CHECK_FALSE(exists(f.store->sandbox_dir("kid")));

    // A file of any other name is not ours to delete: the folder stays, and the report says so.
    REQUIRE(f.store->create_sandbox_dir("odd").ok());
    const std::string foreign = f.store->sandbox_dir("odd") + "/notes.txt";
    std::ofstream(foreign) << "someone's";
    report = f.restart();
    CHECK(report.unfinished_removed == 0);
    CHECK(report.problems.size() == 1);
    CHECK(exists(foreign));
}

TEST_CASE("a kill during a fork leaves nothing a restart does not clear", "[agent][fork]") {
    ForkFixture f;
    REQUIRE(f.create("src").ok());
    // As if killed while the source was suspended, after the child's folder and device: no
    // record for the child, the source's device suspended.
    REQUIRE(f.store->create_sandbox_dir("kid").ok());
    f.platform.devices["kid"] = "/dev/loop7";
    f.platform.suspended.insert("src");
    auto report = f.restart();
    CHECK(report.unfinished_removed == 1);
    CHECK(report.stale_removed == 1);
    CHECK(report.suspended_found == 1);
    CHECK_FALSE(exists(f.store->sandbox_dir("kid")));
    CHECK(f.platform.devices.count("kid") == 0);
    // The first look at the space (with room, even below --min-free) resumes it.
    SpacePolicy policy;
    policy.min_free = SpaceThreshold{100ull << 20, 0};
    policy.critical_free = SpaceThreshold{40ull << 20, 0};
    f.platform.space = FreeSpace{60ull << 20, 1ull << 30};  // low, not critical
    SpaceWatcher watcher(f.platform, f.store->state_dir(), policy, *f.manager);
    watcher.poll_once();
    CHECK(f.platform.suspended.empty());
}

TEST_CASE("the fork stall bound (--fork-max-stall) takes seconds or milliseconds",
          "[agent][fork][cli]") {
    auto stall_of = [](std::vector<std::string> args) {
        Command c = parse_command_line(args);
        REQUIRE(std::holds_alternative<ServeOptions>(c));
        return std::get<ServeOptions>(c).fork_max_stall;
    };
    CHECK(stall_of({}) == std::chrono::milliseconds(2000));
    CHECK(stall_of({"--fork-max-stall", "500ms"}) == std::chrono::milliseconds(500));
    CHECK(stall_of({"--fork-max-stall", "3s"}) == std::chrono::milliseconds(3000));
    CHECK(stall_of({"--fork-max-stall", "1"}) == std::chrono::milliseconds(1000));
    for (std::string bad : {"0", "fast", "2m", "61s", "-1s"}) {
        INFO(bad);
        Command c = parse_command_line({"--fork-max-stall", bad});
        REQUIRE(std::holds_alternative<PrintAndExit>(c));
        CHECK(std::get<PrintAndExit>(c).status == 2);
        CHECK_THAT(std::get<PrintAndExit>(c).text, Catch::Contains("--fork-max-stall"));
    }
}
