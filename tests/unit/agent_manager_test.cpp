#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <thread>

#include "agent_fixture.hpp"

using namespace wrenn::agent;
using namespace wrenn::agent::testing;

namespace {
bool exists(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0;
}
}  // namespace

TEST_CASE("create makes a running sandbox with a sparse CoW and a record", "[agent]") {
    AgentFixture f;
    auto sb = f.create("sb1");
    REQUIRE(sb.ok());
    CHECK(sb->state == SandboxState::Running);
    CHECK(sb->device == "/dev/mapper/wrenn-sb1");
    CHECK(sb->origin_device == "/dev/loop7");
    CHECK(sb->cow_size_bytes > f.platform.origin_size);  // room for a full rewrite
    CHECK(exists(f.store->record_path("sb1")));
    struct stat st {};
    REQUIRE(::stat(f.store->cow_path("sb1").c_str(), &st) == 0);
    CHECK(static_cast<std::uint64_t>(st.st_size) == sb->cow_size_bytes);
    CHECK(st.st_blocks == 0);  // sparse
    CHECK(f.platform.origin_refs["loop:" + f.templates_dir() + "/base.img"] == 1);
}

TEST_CASE("create refuses a duplicate id, an unknown template and a bad id", "[agent]") {
    AgentFixture f;
    REQUIRE(f.create("sb1").ok());
    auto dup = f.create("sb1");
    REQUIRE_FALSE(dup.ok());
    CHECK(dup.error().kind == FailureKind::AlreadyExists);
    auto missing = f.create("sb2", "nope");
    REQUIRE_FALSE(missing.ok());
    CHECK(missing.error().kind == FailureKind::TemplateNotFound);
    auto bad = f.create("../etc");
    REQUIRE_FALSE(bad.ok());
    CHECK(bad.error().kind == FailureKind::InvalidRequest);
    CHECK_FALSE(exists(f.store->sandbox_dir("sb2")));
}

TEST_CASE("create without an id makes one", "[agent]") {
    AgentFixture f;
    auto sb = f.create("");
    REQUIRE(sb.ok());
    CHECK(is_valid_name(sb->id));
    CHECK(f.manager->get(sb->id).has_value());
}

TEST_CASE("a failed create leaves nothing behind", "[agent]") {
    AgentFixture f;
    f.platform.fail_create_errno = EINVAL;
    auto sb = f.create("sb1");
    REQUIRE_FALSE(sb.ok());
    CHECK(sb.error().kind == FailureKind::Internal);
    CHECK_FALSE(exists(f.store->sandbox_dir("sb1")));
    CHECK(f.platform.origin_refs.empty());
    CHECK_FALSE(f.manager->get("sb1").has_value());
    // and the id can be used again
    CHECK(f.create("sb1").ok());
}

TEST_CASE("create fails with unavailable when the kernel lacks device-mapper", "[agent]") {
    AgentFixture f;
    f.platform.kernel.device_mapper = false;
    f.platform.kernel.device_mapper_reason = "no /dev/mapper/control: load dm-snapshot";
    auto sb = f.create("sb1");
    REQUIRE_FALSE(sb.ok());
    CHECK(sb.error().kind == FailureKind::Unavailable);
    CHECK_THAT(sb.error().error.message(), Catch::Contains("load dm-snapshot"));
}

TEST_CASE("pause removes the device, releases the origin and keeps the CoW", "[agent]") {
    AgentFixture f;
    REQUIRE(f.create("sb1").ok());
    auto paused = f.pause("sb1");
    REQUIRE(paused.ok());
    CHECK(paused->state == SandboxState::Paused);
    CHECK(paused->device.empty());
    CHECK(f.platform.devices.empty());
    CHECK(f.platform.origin_refs.empty());
    CHECK(exists(f.store->cow_path("sb1")));
    auto again = f.pause("sb1");
    REQUIRE_FALSE(again.ok());
    CHECK(again.error().kind == FailureKind::InvalidState);
}

TEST_CASE("a pause whose device removal fails keeps the sandbox running", "[agent]") {
    AgentFixture f;
    REQUIRE(f.create("sb1").ok());
    f.platform.fail_remove_errno = EBUSY;
    auto paused = f.pause("sb1");
    REQUIRE_FALSE(paused.ok());
    CHECK(paused.error().kind == FailureKind::DeviceBusy);
    CHECK_THAT(paused.error().error.message(),
               Catch::Contains("pause sb1") && Catch::Contains("device busy (open count 1)"));
    auto sb = f.manager->get("sb1");
    REQUIRE(sb);
    CHECK(sb->state == SandboxState::Running);
    CHECK(sb->device == "/dev/mapper/wrenn-sb1");
    REQUIRE(sb->last_error);
    CHECK_THAT(*sb->last_error, Catch::Contains("device busy"));
    CHECK(f.platform.devices.count("sb1") == 1);
    CHECK(f.platform.origin_refs.size() == 1);  // nothing released
    // the record on disk says the same
    f.stop();
    f.start();
    REQUIRE(f.manager->recover().ok());
    CHECK(f.manager->get("sb1")->state == SandboxState::Running);
    // other errors are 500s
    f.platform.fail_remove_errno = EIO;
    auto io = f.pause("sb1");
    REQUIRE_FALSE(io.ok());
    CHECK(io.error().kind == FailureKind::Internal);
    // and once the device is free the pause succeeds and clears the error
    auto ok = f.pause("sb1");
    REQUIRE(ok.ok());
    CHECK_FALSE(ok->last_error);
}

TEST_CASE("resume removes a stale device of the same name first", "[agent]") {
    AgentFixture f;
    REQUIRE(f.create("sb1").ok());
    REQUIRE(f.pause("sb1").ok());
    f.platform.devices["sb1"] = "/dev/loop99";  // someone left one behind
    f.platform.calls.clear();
    auto resumed = f.resume("sb1");
    REQUIRE(resumed.ok());
    CHECK(resumed->state == SandboxState::Running);
    // First its owner is looked up (a device of another state dir is never removed), then the
    // stale one goes before anything else changes.
    REQUIRE(f.platform.calls.size() >= 4);
    CHECK(f.platform.calls[0] == "list");
    CHECK(f.platform.calls[1] == "remove sb1");
    CHECK(f.platform.calls.back() == "create sb1");
    CHECK(f.platform.devices["sb1"] == "/dev/loop7");
}

TEST_CASE("resume refuses a CoW the kernel marked invalid", "[agent]") {
    AgentFixture f;
    REQUIRE(f.create("sb1").ok());
    REQUIRE(f.pause("sb1").ok());
    f.platform.cow_valid = false;
    auto resumed = f.resume("sb1");
    REQUIRE_FALSE(resumed.ok());
    CHECK(resumed.error().kind == FailureKind::SnapshotInvalid);
    CHECK(f.manager->get("sb1")->state == SandboxState::Paused);
    CHECK(f.platform.origin_refs.empty());
    f.platform.cow_valid = true;
    f.platform.cow_error_errno = 0;  // a corrupt store: also snapshot_invalid
    auto corrupt = f.resume("sb1");
    REQUIRE_FALSE(corrupt.ok());
    CHECK(corrupt.error().kind == FailureKind::SnapshotInvalid);
}

TEST_CASE("resume of a running sandbox is an invalid state", "[agent]") {
    AgentFixture f;
    REQUIRE(f.create("sb1").ok());
    auto resumed = f.resume("sb1");
    REQUIRE_FALSE(resumed.ok());
    CHECK(resumed.error().kind == FailureKind::InvalidState);
}

TEST_CASE("destroy removes device, origin reference, CoW and record", "[agent]") {
    AgentFixture f;
    REQUIRE(f.create("sb1").ok());
    REQUIRE(f.destroy("sb1").ok());
    CHECK(f.platform.devices.empty());
    CHECK(f.platform.origin_refs.empty());
    CHECK_FALSE(exists(f.store->sandbox_dir("sb1")));
    CHECK_FALSE(f.manager->get("sb1"));
    auto again = f.destroy("sb1");
    REQUIRE_FALSE(again.ok());
    CHECK(again.error().kind == FailureKind::NotFound);
}

TEST_CASE("destroy of a busy device fails and keeps everything", "[agent]") {
    AgentFixture f;
    REQUIRE(f.create("sb1").ok());
    f.platform.fail_remove_errno = EBUSY;
    auto out = f.destroy("sb1");
    REQUIRE_FALSE(out.ok());
    CHECK(out.error().kind == FailureKind::DeviceBusy);
    CHECK(exists(f.store->cow_path("sb1")));
    CHECK(f.manager->get("sb1")->state == SandboxState::Running);
}

TEST_CASE("the template loop is shared and counted", "[agent]") {
    AgentFixture f;
    for (int i = 0; i < 8; ++i) {
        REQUIRE(f.create("sb" + std::to_string(i)).ok());
    }
    const std::string key = "loop:" + f.templates_dir() + "/base.img";
    CHECK(f.platform.origin_refs[key] == 8);
    for (int i = 0; i < 4; ++i) {
        REQUIRE(f.pause("sb" + std::to_string(i)).ok());
    }
    CHECK(f.platform.origin_refs[key] == 4);
    for (int i = 0; i < 4; ++i) {
        REQUIRE(f.resume("sb" + std::to_string(i)).ok());
    }
    CHECK(f.platform.origin_refs[key] == 8);
    for (int i = 0; i < 8; ++i) {
        REQUIRE(f.destroy("sb" + std::to_string(i)).ok());
    }
    CHECK(f.platform.origin_refs.empty());
}

TEST_CASE("restart adopts running sandboxes, pauses orphans and removes stale devices", "[agent]") {
    AgentFixture f;
    REQUIRE(f.create("up").ok());
    REQUIRE(f.create("rebooted").ok());
    REQUIRE(f.create("paused").ok());
    REQUIRE(f.pause("paused").ok());
    f.platform.devices.erase("rebooted");         // its device vanished (host reboot)
    f.platform.devices["stray"] = "/dev/loop1";   // a device no record owns
    f.platform.devices["paused"] = "/dev/loop1";  // a stale device for a paused sandbox
    f.platform.origin_refs.clear();               // the old agent's references died with it
    auto report = f.restart();
    CHECK(report.adopted == 1);
    CHECK(report.paused == 1);
    CHECK(report.stale_removed == 2);
    CHECK(report.problems.empty());
    CHECK(f.manager->get("up")->state == SandboxState::Running);
    CHECK(f.manager->get("rebooted")->state == SandboxState::Paused);
    CHECK(f.platform.devices.size() == 1);
    CHECK(f.platform.devices.count("up") == 1);
    CHECK(f.platform.origin_refs["loop:" + f.templates_dir() + "/base.img"] == 1);
    // the adopted sandbox pauses normally, releasing the rebuilt reference
    REQUIRE(f.pause("up").ok());
    CHECK(f.platform.origin_refs.empty());
}

TEST_CASE("restart removes a create that never wrote its record", "[agent]") {
    AgentFixture f;
    std::filesystem::create_directories(f.store->sandbox_dir("half"));
    write_file(f.store->cow_path("half"), 4096);
    f.platform.devices["half"] = "/dev/loop2";
    auto report = f.restart();
    CHECK(report.unfinished_removed == 1);
    CHECK(report.stale_removed == 1);
    CHECK_FALSE(exists(f.store->sandbox_dir("half")));
    CHECK(f.platform.devices.empty());
}

TEST_CASE("an unreadable record is reported and its files are kept", "[agent]") {
    AgentFixture f;
    std::filesystem::create_directories(f.store->sandbox_dir("broken"));
    REQUIRE(write_file_atomically(f.store->record_path("broken"), "{not json").ok());
    auto report = f.restart();
    REQUIRE(report.problems.size() == 1);
    CHECK_THAT(report.problems[0], Catch::Contains("broken"));
    CHECK(exists(f.store->record_path("broken")));
}

TEST_CASE("cleanup-stale removes every device and marks running sandboxes paused", "[agent]") {
    AgentFixture f;
    REQUIRE(f.create("a").ok());
    REQUIRE(f.create("b").ok());
    f.platform.devices["stray"] = "/dev/loop3";
    f.stop();
    f.start();
    auto report = f.manager->cleanup_stale();
    REQUIRE(report.ok());
    CHECK(report->stale_removed == 3);
    CHECK(report->paused == 2);
    CHECK(f.platform.devices.empty());
    CHECK(f.platform.released_dirs.count(f.store->state_dir()) == 1);
    CHECK(f.platform.tcmu_detached == 0);  // no TCMU sandboxes: none of overlaybd's devices touched
    REQUIRE(f.manager->recover().ok());
    CHECK(f.manager->get("a")->state == SandboxState::Paused);
}

TEST_CASE("cleanup-stale reports a device it could not remove", "[agent]") {
    AgentFixture f;
    f.platform.devices["stray"] = "/dev/loop3";
    f.platform.fail_remove_errno = EBUSY;
    auto report = f.manager->cleanup_stale();
    REQUIRE_FALSE(report.ok());
    CHECK_THAT(report.error().message(), Catch::Contains("device busy"));
}

TEST_CASE("flatten needs a paused sandbox and a new template name", "[agent]") {
    AgentFixture f;
    REQUIRE(f.create("sb1").ok());
    auto running = f.flatten("sb1", "gold");
    REQUIRE_FALSE(running.ok());
    CHECK(running.error().kind == FailureKind::InvalidState);
    REQUIRE(f.pause("sb1").ok());
    auto taken = f.flatten("sb1", "base");
    REQUIRE_FALSE(taken.ok());
    CHECK(taken.error().kind == FailureKind::TemplateExists);
    auto made = f.flatten("sb1", "gold");
    REQUIRE(made.ok());
    CHECK(made->path == f.templates_dir() + "/gold.img");
    f.platform.cow_valid = false;
    auto invalid = f.flatten("sb1", "gold2");
    REQUIRE_FALSE(invalid.ok());
    CHECK(invalid.error().kind == FailureKind::SnapshotInvalid);
}

TEST_CASE("operations on different sandboxes run in parallel, one sandbox's in order", "[agent]") {
    AgentFixture f;
    constexpr int kSandboxes = 16;
    std::vector<std::thread> threads;
    std::atomic<int> failures{0};
    for (int i = 0; i < kSandboxes; ++i) {
        threads.emplace_back([&, i] {
            const std::string id = "p" + std::to_string(i);
            if (!f.create(id).ok()) {
                ++failures;
            }
            for (int round = 0; round < 5; ++round) {
                if (!f.pause(id).ok() || !f.resume(id).ok()) {
                    ++failures;
                }
            }
            if (!f.destroy(id).ok()) {
                ++failures;
            }
        });
    }
    for (auto& t : threads) {
        t.join();
    }
    CHECK(failures == 0);
    CHECK(f.platform.devices.empty());
    CHECK(f.platform.origin_refs.empty());
    CHECK(f.manager->list().empty());
}
