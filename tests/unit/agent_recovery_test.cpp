// Recovery, boot cleanup and the state-dir lock, over the fake platform: each decision is made
// on facts (the device list, whose a device is, which CoW its table is over), and a missing
// fact changes nothing.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "agent/daemon/state_dir_lock.hpp"
#include "agent_fixture.hpp"

using namespace wrenn::agent;
using wrenn::Result;
using namespace wrenn::agent::testing;
using wrenn::dm::DeviceOwner;

namespace {

std::string slurp(const std::string& path) {
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

bool exists(const std::string& path) {
    struct stat st {};
    return ::lstat(path.c_str(), &st) == 0;
}

std::size_t removals(const FakePlatform& platform) {
    std::size_t n = 0;
    for (const auto& call : platform.calls) {
        n += call.rfind("remove ", 0) == 0 ? 1 : 0;
    }
    return n;
}

}  // namespace

TEST_CASE("recover: a device list that cannot be read fails startup and changes no record",
          "[agent][recovery]") {
    AgentFixture f;
    REQUIRE(f.create("up").ok());
    REQUIRE(f.create("down").ok());
    REQUIRE(f.pause("down").ok());
    // The records' last writes: each sandbox's digest is written into its record in the
    // background, "up"'s too, and a write after the reads below would look like a change.
    REQUIRE_FALSE(f.recorded_digest("up").empty());
    REQUIRE_FALSE(f.recorded_digest("down").empty());
    f.manager->wait_idle();
    std::filesystem::create_directories(f.store->sandbox_dir("half"));  // an unfinished create
    const std::string up = slurp(f.store->record_path("up"));
    const std::string down = slurp(f.store->record_path("down"));
    f.platform.devices["stray"] = "/dev/loop1";
    f.platform.fail_list_errno = EACCES;
    f.platform.calls.clear();
    f.stop();
    f.start();
    auto report = f.manager->recover();
    REQUIRE_FALSE(report.ok());
    CHECK_THAT(report.error().message(), Catch::Contains("list device-mapper devices") &&
                                             Catch::Contains("no record was changed"));
    CHECK(slurp(f.store->record_path("up")) == up);
    CHECK(slurp(f.store->record_path("down")) == down);
    CHECK(exists(f.store->sandbox_dir("half")));
    CHECK(f.platform.devices.size() == 2);  // "up" and the stray: nothing removed
    CHECK(removals(f.platform) == 0);
}

TEST_CASE("recover: device-mapper in the kernel but unusable changes no record",
          "[agent][recovery]") {
    AgentFixture f;
    REQUIRE(f.create("up").ok());
    REQUIRE_FALSE(f.recorded_digest("up").empty());  // the last write of the record
    f.manager->wait_idle();
    const std::string up = slurp(f.store->record_path("up"));
    // /dev/mapper/control cannot be opened (not root, a bind mount over it): the device list
    // is unknown, not empty.
    f.platform.kernel.device_mapper = false;
    f.platform.kernel.device_mapper_reason = "open device-mapper: is dm-mod loaded?";
    f.stop();
    f.start();
    auto report = f.manager->recover();
    REQUIRE_FALSE(report.ok());
    CHECK_THAT(report.error().message(), Catch::Contains("device-mapper is in the kernel") &&
                                             Catch::Contains("no record was changed"));
    CHECK(slurp(f.store->record_path("up")) == up);
    CHECK(f.platform.devices.count("up") == 1);

    // No device-mapper in the kernel at all: no snapshot can exist, so running means paused.
    f.platform.kernel.device_mapper_in_kernel = false;
    f.platform.devices.clear();
    f.stop();
    f.start();
    auto again = f.manager->recover();
    REQUIRE(again.ok());
    CHECK(again->paused == 1);
}

TEST_CASE("recover: a live device over a paused record's CoW is adopted as running",
          "[agent][recovery]") {
    AgentFixture f;
    REQUIRE(f.create("sb1").ok());
    REQUIRE(f.pause("sb1").ok());
    // A resume whose record write failed: the device is up over the CoW, the record says paused.
    f.platform.devices["sb1"] = "/dev/loop7";
    f.platform.cows["sb1"] = f.store->cow_path("sb1");
    auto report = f.restart();
    CHECK(report.adopted == 1);
    CHECK(report.stale_removed == 0);
    auto sb = f.manager->get("sb1");
    REQUIRE(sb);
    CHECK(sb->state == SandboxState::Running);
    CHECK(sb->device == "/dev/mapper/wrenn-sb1");
    CHECK(f.platform.devices.count("sb1") == 1);
    CHECK_THAT(slurp(f.store->record_path("sb1")), Catch::Contains("\"running\""));
    // and it is a normal running sandbox again: pause works and releases the origin
    REQUIRE(f.pause("sb1").ok());
    CHECK(f.platform.devices.empty());
    CHECK(f.platform.origin_refs.empty());
}

TEST_CASE("recover: the one device listing decides, with no kernel query per device",
          "[agent][recovery]") {
    AgentFixture f;
    for (const char* id : {"a", "b", "c"}) {
        REQUIRE(f.create(id).ok());
    }
    // Suspended for space by the agent that was killed: the listing says so.
    f.platform.suspended.insert("b");
    f.platform.calls.clear();
    f.platform.info_queries = 0;
    auto report = f.restart();
    CHECK(report.adopted == 3);
    CHECK(report.suspended_found == 1);
    CHECK(report.problems.empty());
    CHECK(std::count(f.platform.calls.begin(), f.platform.calls.end(), "list") == 1);
    CHECK(f.platform.info_queries == 0);
    for (const char* id : {"a", "b", "c"}) {
        CHECK(f.manager->get(id)->state == SandboxState::Running);
    }
}

TEST_CASE("recover: a device listed without a live table is not adopted", "[agent][recovery]") {
    AgentFixture f;
    REQUIRE(f.create("sb1").ok());
    // A create cut short between its ioctls: the device has our UUID and no snapshot table.
    f.platform.cows.erase("sb1");
    auto report = f.restart();
    CHECK(report.adopted == 0);
    CHECK(report.paused == 1);
    CHECK(report.stale_removed == 1);
    CHECK(f.manager->get("sb1")->state == SandboxState::Paused);
    CHECK(f.platform.devices.empty());
}

TEST_CASE("recover: a device of ours over another CoW is not adopted", "[agent][recovery]") {
    AgentFixture f;
    REQUIRE(f.create("sb1").ok());
    f.platform.cows["sb1"] = "/somewhere/else.cow";
    auto report = f.restart();
    CHECK(report.adopted == 0);
    CHECK(report.paused == 1);
    CHECK(report.stale_removed == 1);
    CHECK(f.manager->get("sb1")->state == SandboxState::Paused);
    CHECK(f.platform.devices.empty());
}

TEST_CASE("recover and cleanup-stale leave another state dir's devices alone",
          "[agent][recovery]") {
    AgentFixture f;
    f.platform.devices["theirs"] = "/dev/loop4";
    f.platform.owners["theirs"] = DeviceOwner::Foreign;
    auto report = f.restart();
    CHECK(report.foreign_left == 1);
    CHECK(report.stale_removed == 0);
    CHECK(f.platform.devices.count("theirs") == 1);
    CHECK(removals(f.platform) == 0);

    auto cleaned = f.manager->cleanup_stale();
    REQUIRE(cleaned.ok());
    CHECK(cleaned->foreign_left == 1);
    CHECK(f.platform.devices.count("theirs") == 1);
    CHECK(removals(f.platform) == 0);
}

TEST_CASE("recover: a foreign device under one of our ids is not adopted, nor removed",
          "[agent][recovery]") {
    AgentFixture f;
    REQUIRE(f.create("sb1").ok());
    f.platform.owners["sb1"] = DeviceOwner::Foreign;  // same name, another state dir's UUID
    auto report = f.restart();
    CHECK(report.adopted == 0);
    CHECK(report.foreign_left == 1);
    CHECK(f.platform.devices.count("sb1") == 1);
    CHECK(f.manager->get("sb1")->state == SandboxState::Paused);
}

TEST_CASE("recover: a wrenn- snapshot without a wrenn UUID is stale and removed",
          "[agent][recovery]") {
    AgentFixture f;
    REQUIRE(f.create("sb1").ok());
    f.platform.owners["sb1"] = DeviceOwner::Unmarked;  // made by hand over our CoW
    f.platform.devices["byhand"] = "/dev/loop5";
    f.platform.owners["byhand"] = DeviceOwner::Unmarked;
    auto report = f.restart();
    CHECK(report.adopted == 0);
    CHECK(report.stale_removed == 2);
    CHECK(f.platform.devices.empty());
    CHECK(f.manager->get("sb1")->state == SandboxState::Paused);
}

TEST_CASE("recover: devices with the pre-tag UUID form are taken as ours", "[agent][recovery]") {
    AgentFixture f;
    REQUIRE(f.create("sb1").ok());
    f.platform.owners["sb1"] = DeviceOwner::Legacy;  // running before the upgrade
    f.platform.devices["old"] = "/dev/loop6";
    f.platform.owners["old"] = DeviceOwner::Legacy;  // a stray from before the upgrade
    f.platform.origin_refs.clear();
    auto report = f.restart();
    CHECK(report.adopted == 1);
    CHECK(report.stale_removed == 1);
    CHECK(f.manager->get("sb1")->state == SandboxState::Running);
    CHECK(f.platform.devices.count("sb1") == 1);
    CHECK(f.platform.devices.count("old") == 0);
}

TEST_CASE("recover: flatten temp files are swept, nothing else", "[agent][recovery]") {
    AgentFixture f;
    const std::string dir = f.templates_dir();
    write_file(dir + "/gold.img.tmp-Ab3xYz", 4096);    // a killed flatten's
    write_file(dir + "/keep.img", 4096);               // a template
    write_file(dir + "/notes.img.tmp-toolong", 4096);  // not our pattern
    write_file(dir + "/other.tmp-Ab3xYz", 4096);       // not our pattern
    write_file(f.tmp.path() + "/outside", 4096);       // what a symlink points at
    std::filesystem::create_symlink(f.tmp.path() + "/outside", dir + "/link.img.tmp-Qq1234");
    std::filesystem::create_directory(dir + "/dir.img.tmp-Zz9999");
    auto report = f.restart();
    CHECK(report.temp_files_removed == 1);
    CHECK_FALSE(exists(dir + "/gold.img.tmp-Ab3xYz"));
    CHECK(exists(dir + "/keep.img"));
    CHECK(exists(dir + "/notes.img.tmp-toolong"));
    CHECK(exists(dir + "/other.tmp-Ab3xYz"));
    CHECK(exists(dir + "/link.img.tmp-Qq1234"));
    CHECK(exists(f.tmp.path() + "/outside"));
    CHECK(exists(dir + "/dir.img.tmp-Zz9999"));
    CHECK(exists(dir + "/base.img"));
}

TEST_CASE("flatten temp names: exactly <name>.img.tmp- and six letters or digits",
          "[agent][recovery]") {
    CHECK(is_flatten_temp_name("base.img.tmp-a1B2c3"));
    CHECK_FALSE(is_flatten_temp_name("base.img.tmp-a1B2c"));
    CHECK_FALSE(is_flatten_temp_name("base.img.tmp-a1B2c3d"));
    CHECK_FALSE(is_flatten_temp_name("base.img.tmp-a1B2c."));
    CHECK_FALSE(is_flatten_temp_name(".img.tmp-a1B2c3"));
    CHECK_FALSE(is_flatten_temp_name("../x.img.tmp-a1B2c3"));
    CHECK_FALSE(is_flatten_temp_name("base.img"));
}

TEST_CASE("cleanup-stale: a device list that cannot be read changes no record",
          "[agent][recovery]") {
    AgentFixture f;
    REQUIRE(f.create("sb1").ok());
    const std::string before = slurp(f.store->record_path("sb1"));
    f.platform.fail_list_errno = EIO;
    auto report = f.manager->cleanup_stale();
    REQUIRE_FALSE(report.ok());
    CHECK_THAT(report.error().message(), Catch::Contains("no record was changed"));
    CHECK(slurp(f.store->record_path("sb1")) == before);
    CHECK(f.platform.devices.count("sb1") == 1);
}

TEST_CASE("cleanup-stale: a sandbox whose device removal fails stays running",
          "[agent][recovery]") {
    AgentFixture f;
    REQUIRE(f.create("sb1").ok());
    f.stop();
    f.start();
    f.platform.fail_remove_errno = EBUSY;
    auto report = f.manager->cleanup_stale();
    REQUIRE_FALSE(report.ok());
    CHECK_THAT(report.error().message(), Catch::Contains("device busy"));
    CHECK(f.platform.devices.count("sb1") == 1);
    CHECK_THAT(slurp(f.store->record_path("sb1")), Catch::Contains("\"running\""));
    // and the next start adopts it, since its device is live over its CoW
    REQUIRE(f.manager->recover().ok());
    CHECK(f.manager->get("sb1")->state == SandboxState::Running);
}

TEST_CASE("flatten refuses while a device for the sandbox exists", "[agent][recovery]") {
    AgentFixture f;
    REQUIRE(f.create("sb1").ok());
    REQUIRE(f.pause("sb1").ok());
    f.platform.devices["sb1"] = "/dev/loop7";  // say, made by hand over the CoW
    auto refused = f.flatten("sb1", "gold");
    REQUIRE_FALSE(refused.ok());
    CHECK(refused.error().kind == FailureKind::InvalidState);
    CHECK_THAT(refused.error().error.message(), Catch::Contains("wrenn-sb1 is live"));
    CHECK_FALSE(exists(f.templates_dir() + "/gold.img"));
    f.platform.devices.erase("sb1");
    CHECK(f.flatten("sb1", "gold").ok());
}

TEST_CASE("a live GET that races a pause does not write onto the paused record",
          "[agent][recovery]") {
    AgentFixture f;
    REQUIRE(f.create("sb1").ok());
    // The status read returns after a pause committed in between.
    f.platform.on_usage = [&f] { REQUIRE(f.pause("sb1").ok()); };
    auto got = f.wait<Sandbox>([&](auto cb) { f.manager->get_live("sb1", cb); });
    REQUIRE(got.ok());
    CHECK(got->state == SandboxState::Paused);
    CHECK(got->cow_status.empty());
    auto sb = f.manager->get("sb1");
    CHECK(sb->state == SandboxState::Paused);
    CHECK(sb->cow_status.empty());
}

TEST_CASE("pause fails, and says so, when the CoW cannot be synced", "[agent][recovery]") {
    AgentFixture f;
    REQUIRE(f.create("sb1").ok());
    std::filesystem::remove(f.store->cow_path("sb1"));
    auto paused = f.pause("sb1");
    REQUIRE_FALSE(paused.ok());
    CHECK_THAT(paused.error().error.message(),
               Catch::Contains("fsync") || Catch::Contains("open " + f.store->cow_path("sb1")));
    CHECK(f.platform.devices.empty());  // the device is gone either way
    CHECK(f.manager->get("sb1")->last_error);
}

TEST_CASE("state dir lock: a second holder is refused with the holder's pid", "[agent][lock]") {
    TempDir tmp;
    const std::string dir = tmp.path() + "/state";
    auto first = StateDirLock::acquire(dir);
    REQUIRE(first.ok());
    CHECK(slurp(dir + "/agent.lock") == std::to_string(::getpid()) + "\n");
    struct stat st {};
    REQUIRE(::stat((dir + "/agent.lock").c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);

    auto second = StateDirLock::acquire(dir);
    REQUIRE_FALSE(second.ok());
    CHECK(second.error().code() == EWOULDBLOCK);
    CHECK_THAT(second.error().message(),
               Catch::Contains("pid " + std::to_string(::getpid())) && Catch::Contains(dir));

    // Released with the handle (moved first, to show the move keeps it held).
    {
        StateDirLock moved = std::move(first).value();
        CHECK_FALSE(StateDirLock::acquire(dir).ok());
    }
    CHECK(StateDirLock::acquire(dir).ok());
}

TEST_CASE("state dir lock: a symlink at the lock file is refused", "[agent][lock]") {
    TempDir tmp;
    const std::string dir = tmp.path() + "/state";
    std::filesystem::create_directories(dir);
    write_file(tmp.path() + "/target", 0);
    std::filesystem::create_symlink(tmp.path() + "/target", dir + "/agent.lock");
    auto lock = StateDirLock::acquire(dir);
    REQUIRE_FALSE(lock.ok());
    CHECK(lock.error().code() == ELOOP);
    CHECK(slurp(tmp.path() + "/target").empty());
}

TEST_CASE("state dir tags: stable, distinct and short enough for a dm UUID", "[agent][lock]") {
    const std::string a = tag_for_canonical_path("/var/lib/wrenn");
    CHECK(a.size() == 16);
    CHECK(a == tag_for_canonical_path("/var/lib/wrenn"));
    CHECK(a != tag_for_canonical_path("/var/lib/wrenn2"));
    CHECK(a != tag_for_canonical_path("/srv/wrenn"));
    // 16-character tag + the longest valid id: inside DM_UUID_LEN (129, with the NUL).
    CHECK(wrenn::dm::device_uuid(a, std::string(64, 'x')).size() < 129);
    using wrenn::dm::classify_device_uuid;
    CHECK(classify_device_uuid(wrenn::dm::device_uuid(a, "sb1"), a, "sb1") == DeviceOwner::Ours);
    CHECK(classify_device_uuid("WRENN-SNAP-sb1", a, "sb1") == DeviceOwner::Legacy);
    CHECK(classify_device_uuid("", a, "sb1") == DeviceOwner::Unmarked);
    CHECK(classify_device_uuid("LVM-xyz", a, "sb1") == DeviceOwner::Unmarked);
    CHECK(classify_device_uuid(wrenn::dm::device_uuid(tag_for_canonical_path("/srv/w"), "sb1"), a,
                               "sb1") == DeviceOwner::Foreign);
    // The id comes from the device's name: this is the pre-tag UUID of id 0123456789abcdef-x.
    CHECK(classify_device_uuid(wrenn::dm::device_uuid("0123456789abcdef", "x"), a,
                               "0123456789abcdef-x") == DeviceOwner::Legacy);
}

TEST_CASE("resume and destroy never remove another state dir's device of the same name",
          "[agent][recovery]") {
    AgentFixture f;
    REQUIRE(f.create("sb1").ok());
    REQUIRE(f.pause("sb1").ok());
    // Another agent, with its own state dir, runs a sandbox that is also called sb1.
    f.platform.devices["sb1"] = "/dev/loop9";
    f.platform.owners["sb1"] = DeviceOwner::Foreign;
    auto resumed = f.resume("sb1");
    REQUIRE_FALSE(resumed.ok());
    CHECK(resumed.error().kind == FailureKind::InvalidState);
    CHECK(resumed.error().error.message().find("another wrenn-agent's state dir") !=
          std::string::npos);
    CHECK(f.platform.devices.at("sb1") == "/dev/loop9");
    REQUIRE(f.destroy("sb1").ok());
    CHECK(f.platform.devices.at("sb1") == "/dev/loop9");  // theirs is still there
    CHECK_FALSE(f.manager->get("sb1").has_value());
}

namespace {

OriginSpec tcmu_origin(const std::string& config) {
    return OriginSpec{OriginSpec::Type::Tcmu, config, "overlaybd", std::nullopt, std::nullopt};
}

Result<Sandbox, Failure> create_tcmu(AgentFixture& f, const std::string& id,
                                     const std::string& config) {
    return f.wait<Sandbox>([&](auto cb) {
        f.manager->create(CreateRequest{id, "", tcmu_origin(config)}, cb);
    });
}

std::size_t index_of(const std::vector<std::string>& calls, const std::string& call) {
    return static_cast<std::size_t>(std::find(calls.begin(), calls.end(), call) - calls.begin());
}

}  // namespace

TEST_CASE("recover: a TCMU device of ours that no sandbox uses is detached, a used one stays",
          "[agent][recovery]") {
    AgentFixture f;
    REQUIRE(create_tcmu(f, "gone", "/obd/a/config.v1.json").ok());
    REQUIRE(create_tcmu(f, "live", "/obd/b/config.v1.json").ok());
    REQUIRE(f.create("loop").ok());
    const std::string a = tcmu_origin("/obd/a/config.v1.json").key();
    const std::string b = tcmu_origin("/obd/b/config.v1.json").key();
    const std::string c = tcmu_origin("/obd/c/config.v1.json").key();
    // A destroy of "gone" killed after its device went and before its origin was released; and
    // an unused device of ours whose disk something else holds.
    f.platform.devices.erase("gone");
    f.platform.tcmu_devices.insert(c);
    f.platform.tcmu_in_use.insert(c);
    // The new process holds no origin until it adopts.
    f.platform.origin_refs.clear();
    f.platform.calls.clear();
    auto report = f.restart();
    CHECK(report.adopted == 2);
    CHECK(report.paused == 1);
    CHECK(report.tcmu_detached == 1);
    CHECK(f.platform.tcmu_devices == std::set<std::string>{b, c});
    REQUIRE(report.problems.size() == 1);
    CHECK_THAT(report.problems[0], Catch::Contains("device busy"));
    // The sweep comes after the adoptions took their origins again.
    CHECK(index_of(f.platform.calls, "acquire " + b) < index_of(f.platform.calls, "sweep tcmu"));
    CHECK(index_of(f.platform.calls, "sweep tcmu") < f.platform.calls.size());
    // The live sandbox keeps working on its origin.
    REQUIRE(f.pause("live").ok());
    CHECK(f.platform.tcmu_devices == std::set<std::string>{c});
    REQUIRE(f.resume("live").ok());
}

TEST_CASE("recover: a sweep that fails is a problem, not a failed startup", "[agent][recovery]") {
    AgentFixture f;
    REQUIRE(f.create("sb1").ok());
    f.platform.fail_sweep_errno = EACCES;
    auto report = f.restart();
    CHECK(report.adopted == 1);
    REQUIRE(report.problems.size() == 1);
    CHECK_THAT(report.problems[0], Catch::Contains("list tcmu devices"));
}

TEST_CASE("cleanup-stale detaches our unused TCMU devices after removing our devices",
          "[agent][recovery]") {
    AgentFixture f;
    REQUIRE(create_tcmu(f, "t1", "/obd/a/config.v1.json").ok());
    f.platform.origin_refs.clear();  // a new process: --cleanup-stale holds nothing
    f.platform.calls.clear();
    f.stop();
    f.start();
    auto report = f.manager->cleanup_stale();
    REQUIRE(report.ok());
    CHECK(report->stale_removed == 1);
    CHECK(report->tcmu_detached == 1);
    CHECK(f.platform.tcmu_devices.empty());
    CHECK(index_of(f.platform.calls, "remove t1") < index_of(f.platform.calls, "sweep tcmu"));

    // One that stays (in use by something else) fails the cleanup, saying why.
    f.platform.tcmu_devices.insert("tcmu:x");
    f.platform.tcmu_in_use.insert("tcmu:x");
    auto busy = f.manager->cleanup_stale();
    REQUIRE_FALSE(busy.ok());
    CHECK_THAT(busy.error().message(), Catch::Contains("detach tcmu:x: device busy"));
}
