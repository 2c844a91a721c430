// An attach that finds its id taken: judge_existing, and what attach does with a device that
// an attach killed at any step left half-made.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "tcmu/configfs.hpp"
#include "tcmu/configfs/naming.hpp"
#include "unit/fake_configfs.hpp"

namespace tcmu = wrenn::tcmu;
using namespace wrenn::tcmu::testing;

TEST_CASE("judge_existing: another's values are foreign, a finished device complete", "[tcmu]") {
    using Kind = tcmu::ExistingVerdict::Kind;
    auto req = request();  // overlaybd//cfgs/a/config.v1.json, dev_size 4096
    req.serial = "WRENN-TCMU-aa-123";
    const std::string config = "overlaybd//cfgs/a/config.v1.json";
    auto judge = [&](tcmu::ExistingDevice d) { return tcmu::judge_existing(d, req); };

    CHECK(judge({}).kind == Kind::HalfMade);  // a bare folder: killed right after mkdir
    CHECK(judge({}).why == "not enabled");
    CHECK(judge({"", 0, req.serial}).kind == Kind::HalfMade);
    CHECK(judge({config, 0, req.serial}).kind == Kind::HalfMade);  // killed before dev_size
    CHECK(judge({config, 4096, "", true}).kind == Kind::HalfMade);
    CHECK(judge({config, 4096, req.serial, true}).why == "enabled but not exported");
    CHECK(judge({config, 4096, req.serial, true, true}).why == "exported but without its disk");
    CHECK(judge({config, 4096, req.serial, true, true, true}).kind == Kind::Complete);

    auto foreign = judge({"qcow//x.qcow2", 0, ""});
    CHECK(foreign.kind == Kind::Foreign);
    CHECK_THAT(foreign.why, Catch::Contains("its dev_config is \"qcow//x.qcow2\""));
    CHECK(judge({config, 8192, req.serial}).kind == Kind::Foreign);
    CHECK_THAT(judge({config, 8192, req.serial}).why, Catch::Contains("its dev_size is 8192"));
    // dev_size is fixed at enable: an enabled device without this request's size is another's.
    CHECK(judge({config, 0, req.serial, true}).kind == Kind::Foreign);
    CHECK(judge({"", 4096, req.serial, true}).kind == Kind::Foreign);  // enabled, no dev_config
    auto other_dir = judge({config, 4096, "WRENN-TCMU-bb-123", true});
    CHECK(other_dir.kind == Kind::Foreign);
    CHECK_THAT(other_dir.why, Catch::Contains("its serial is \"WRENN-TCMU-bb-123\""));
    // The operator's CLI writes no serial: an agent's device is never its half-made one.
    auto cli = request();
    CHECK(tcmu::judge_existing({config, 0, "WRENN-TCMU-aa-123"}, cli).kind == Kind::Foreign);
    CHECK(tcmu::judge_existing({config, 4096, "", false}, cli).kind == Kind::HalfMade);
}

TEST_CASE("an attach killed at any step never blocks the next attach of the same id", "[tcmu]") {
    for (const bool with_serial : {false, true}) {
        auto req = request();
        if (with_serial) {
            req.serial = tcmu::owner_serial("0123456789abcdef", "123");
        }
        const std::size_t steps = kAttachSequence.size() + (with_serial ? 1 : 0);
        for (int k = 0; k < static_cast<int>(steps); ++k) {
            DYNAMIC_SECTION((with_serial ? "with" : "without")
                            << " a serial, killed at step " << k) {
                FakeKernel kernel;
                kernel.kill_at = k;
                CHECK_THROWS_AS(configfs(kernel).attach(req), Killed);
                kernel.kill_at = -1;
                const bool left_core = kernel.nodes.count(kCore) != 0;
                auto found = configfs(kernel).inspect_existing("123");
                // Enabled and never exported: taken over where it stopped, not made again.
                const bool taken_over = found.ok() && found->enabled && !found->exported;
                if (configfs(kernel).find_attached("123")->has_value()) {
                    // Killed after the kernel had finished the device (reading the address):
                    // attached, and the next attach says so instead of taking it over.
                    auto again = configfs(kernel).attach(req);
                    REQUIRE_FALSE(again.ok());
                    CHECK_THAT(again.error().message(),
                               Catch::Contains("in use by a device for this same origin; "
                                               "detach it first"));
                    REQUIRE(configfs(kernel).detach("123").ok());
                }
                kernel.log.clear();
                auto disk = configfs(kernel).attach(req);
                INFO((disk.ok() ? *disk : disk.error().message()));
                REQUIRE(disk.ok());
                CHECK(*configfs(kernel).find_attached("123") == *disk);
                if (taken_over) {
                    CHECK(kernel.count("rmdir " + kCore) == 0);
                    CHECK(kernel.count("write " + kCore + "/enable 1") == 0);
                } else if (left_core && k < static_cast<int>(steps) - 1) {
                    CHECK(kernel.count("rmdir " + kCore) == 1);  // the half-made one went first
                }
                REQUIRE(configfs(kernel).detach("123").ok());
                CHECK(kernel.leftovers().empty());
            }
        }
    }
}

TEST_CASE("an attach killed after marking the device leaves what detach_unused clears", "[tcmu]") {
    auto req = request();
    req.serial = tcmu::owner_serial("0123456789abcdef", "123");
    // From the serial write (step 2) on, the device says whose it is.
    for (int k = 3; k < static_cast<int>(kAttachSequence.size()) + 1; ++k) {
        DYNAMIC_SECTION("killed at step " << k) {
            FakeKernel kernel;
            kernel.kill_at = k;
            CHECK_THROWS_AS(configfs(kernel).attach(req), Killed);
            kernel.kill_at = -1;
            auto swept = configfs(kernel).detach_unused("0123456789abcdef", {});
            REQUIRE(swept.ok());
            CHECK(swept->detached == std::vector<std::string>{"123"});
            CHECK(swept->left.empty());
            CHECK(kernel.leftovers().empty());
        }
    }
}

TEST_CASE("a half-made device is removed with a log line, then attached again", "[tcmu]") {
    FakeKernel kernel;
    kernel.kill_at = 5;  // after the control writes: configured, never enabled
    REQUIRE(kAttachSequence[5] == "write " + kCore + "/attrib/nl_reply_supported -1");
    CHECK_THROWS_AS(configfs(kernel).attach(request()), Killed);
    kernel.kill_at = -1;
    std::string tmpl = (std::filesystem::temp_directory_path() / "wrenn-tcmu-XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    std::filesystem::path dir = tmpl;
    std::ofstream(dir / "config.v1.json") << R"({"lowers": [], "resultFile": "result"})";
    auto req = request();
    req.config_path = (dir / "config.v1.json").string();
    // The id is taken by the killed attach's device of another config: refused, untouched.
    auto other = configfs(kernel).attach(req);
    REQUIRE_FALSE(other.ok());
    CHECK(other.error().code() == EEXIST);
    CHECK(kernel.nodes.count(kCore) != 0);
    // The same request finds it half-made: removes it, says so, attaches.
    REQUIRE(configfs(kernel).attach(request()).ok());
    CHECK(kernel.count("rmdir " + kCore) == 1);
    REQUIRE(configfs(kernel).detach("123").ok());
    // The log line goes to the attach log as well.
    kernel.kill_at = static_cast<int>(kernel.log.size()) + 3;  // after the first control write
    CHECK_THROWS_AS(configfs(kernel).attach(req), Killed);
    kernel.kill_at = -1;
    REQUIRE(configfs(kernel).attach(req).ok());
    std::stringstream text;
    text << std::ifstream(dir / "result").rdbuf();
    std::filesystem::remove_all(dir);
    CHECK_THAT(text.str(), Catch::Contains("dev_123 exists half-made (not enabled), left by an "
                                           "attach that did not finish; removing it and "
                                           "attaching again"));
}

TEST_CASE("an enabled half-made device is taken over where it stopped, never made again",
          "[tcmu]") {
    // Killed after enable (7), after cmd_time_out (10), with the loopback target made (12), with
    // lun_0 made (14), with the nexus written (15): enabled, never exported.
    for (const int k : {7, 10, 12, 14, 15}) {
        DYNAMIC_SECTION("killed at step " << k) {
            FakeKernel kernel;
            kernel.kill_at = k;
            CHECK_THROWS_AS(configfs(kernel).attach(request()), Killed);
            kernel.kill_at = -1;
            kernel.log.clear();
            auto disk = configfs(kernel).attach(request());
            INFO((disk.ok() ? *disk : disk.error().message()));
            REQUIRE(disk.ok());
            CHECK(*configfs(kernel).find_attached("123") == *disk);
            // The handler was told of this device once; it never sees it go and come back.
            CHECK(kernel.count("rmdir " + kCore) == 0);
            CHECK(kernel.count("write " + kCore + "/enable 1") == 0);
            CHECK(kernel.count("write " + kCore + "/control dev_size=4096") == 0);
            CHECK(kernel.count("write " + kCore + "/attrib/cmd_time_out 7") == 1);
            CHECK(kernel.count("symlink " + kTarget + "/tpgt_1/lun/lun_0/dev_123 -> " + kCore) ==
                  1);
            REQUIRE(configfs(kernel).detach("123").ok());
            CHECK(kernel.leftovers().empty());
        }
    }
}

TEST_CASE("a taken-over device that no handler takes is removed, and says why", "[tcmu]") {
    std::string tmpl = (std::filesystem::temp_directory_path() / "wrenn-tcmu-XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    std::filesystem::path dir = tmpl;
    std::ofstream(dir / "config.v1.json") << R"({"lowers": [], "resultFile": "result"})";
    auto req = request();
    req.config_path = (dir / "config.v1.json").string();
    FakeKernel kernel;
    kernel.kill_at = 12;  // enabled, the loopback target made, never exported
    CHECK_THROWS_AS(configfs(kernel).attach(req), Killed);
    kernel.kill_at = -1;
    kernel.handler_running = false;
    auto disk = configfs(kernel).attach(req);
    std::stringstream text;
    text << std::ifstream(dir / "result").rdbuf();
    std::filesystem::remove_all(dir);
    REQUIRE_FALSE(disk.ok());
    CHECK(disk.error().code() == ETIMEDOUT);
    CHECK_THAT(disk.error().message(), Catch::Contains("no process opened"));
    CHECK(kernel.leftovers().empty());  // the killed attach's device went with the failed try
    CHECK_THAT(text.str(), Catch::Contains("dev_123 exists enabled but not exported, left by an "
                                           "attach that did not finish; taking it over from "
                                           "there"));

    // With tries to spare, one fresh try follows (the handler may have given up on the device it
    // took over), and no more: it fails as an attach with no handler does.
    kernel.log.clear();
    kernel.handler_running = true;
    kernel.kill_at = 12;
    CHECK_THROWS_AS(configfs(kernel).attach(request()), Killed);
    kernel.kill_at = -1;
    kernel.handler_running = false;
    kernel.log.clear();
    auto opts = fake_options();
    opts.attempts = 5;
    auto again = configfs(kernel, opts).attach(request());
    REQUIRE_FALSE(again.ok());
    CHECK(again.error().code() == ETIMEDOUT);
    CHECK_THAT(again.error().message(), Catch::StartsWith("attach tcmu device 123 (try 2 of 5)"));
    CHECK(kernel.count("mkdir " + kCore) == 2);  // found taken, then made afresh
    CHECK(kernel.leftovers().empty());
}

// ---- Recovery's sweep of unused devices of ours. ----------------------------------------------

TEST_CASE("the try that redoes a half-made device is an ordinary try, retried on failure",
          "[tcmu]") {
    FakeKernel kernel;
    kernel.kill_at = 4;  // after the first control write: a half-made device
    CHECK_THROWS_AS(configfs(kernel).attach(request()), Killed);
    kernel.kill_at = -1;
    kernel.disk_appears = false;
    auto opts = fake_options();
    opts.attempts = 2;
    auto disk = configfs(kernel, opts).attach(request());
    REQUIRE_FALSE(disk.ok());
    CHECK(disk.error().code() == ETIMEDOUT);
    CHECK_THAT(disk.error().message(), Catch::StartsWith("attach tcmu device 123 (try 2 of 2)"));
    CHECK(kernel.count("mkdir " + kCore) == 4);  // killed, found taken, redone, retried
    CHECK(kernel.leftovers().empty());
}
