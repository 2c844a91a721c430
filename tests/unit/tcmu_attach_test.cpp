// tcmu::Configfs::attach over the fake configfs: the sequence, its retries and waits, the
// handler it waits for, and what it leaves behind when a step fails.
#include <catch2/catch.hpp>
#include <cerrno>
#include <sstream>
#include <string>
#include <vector>

#include "tcmu/cli.hpp"
#include "tcmu/configfs.hpp"
#include "tcmu/configfs/naming.hpp"
#include "unit/fake_configfs.hpp"

namespace tcmu = wrenn::tcmu;
using namespace wrenn::tcmu::testing;

TEST_CASE("attach runs overlaybd-attacher's configfs sequence and returns the disk", "[tcmu]") {
    FakeKernel kernel;
    auto disk = configfs(kernel).attach(request());
    REQUIRE(disk.ok());
    CHECK(*disk == kDev + "/sda");
    CHECK(kernel.log == kAttachSequence);

    CHECK(*configfs(kernel).find_attached("123") == kDev + "/sda");
    CHECK(*configfs(kernel).list_attached() == std::vector<std::string>{"123"});
    CHECK(*configfs(kernel).attached_config("123") == "/cfgs/a/config.v1.json");
}

TEST_CASE("attach leaves out dev_size and cmd_time_out when not asked for", "[tcmu]") {
    FakeKernel kernel;
    auto req = request();
    req.size_bytes.reset();
    req.cmd_time_out_s = 0;
    req.handler = "qcow";
    req.config_path = "/scratch/img.qcow2";
    REQUIRE(configfs(kernel).attach(req).ok());
    CHECK(kernel.count("write " + kCore + "/control dev_config=qcow//scratch/img.qcow2") == 1);
    for (const std::string& entry : kernel.log) {
        CHECK_FALSE(entry.find("dev_size") != std::string::npos);
        CHECK_FALSE(entry.find("cmd_time_out") != std::string::npos);
    }
}

TEST_CASE("a failure at any attach step names the step and leaves nothing behind", "[tcmu]") {
    const std::vector<std::string> steps = {
        "create tcmu hba user_999999999",
        "create tcmu device dev_123",
        "configure tcmu device dev_123",
        "configure tcmu device dev_123",
        "configure tcmu device dev_123",
        "configure tcmu device dev_123",
        "enable tcmu device dev_123",
        "set cmd_time_out of tcmu device dev_123",
        "wait for a userspace handler to take dev_123",
        "wait for a userspace handler to take dev_123",
        "create loopback fabric",
        "create loopback target naa.1990000000000123",
        "create loopback target naa.1990000000000123",
        "create loopback target naa.1990000000000123",
        "create nexus of naa.1990000000000123",
        "export dev_123 as lun_0 of naa.1990000000000123",
        "read SCSI address of naa.1990000000000123",
    };
    REQUIRE(steps.size() == kAttachSequence.size());
    for (int k = 0; k < static_cast<int>(kAttachSequence.size()); ++k) {
        DYNAMIC_SECTION("failing step " << k << ": "
                                        << kAttachSequence[static_cast<std::size_t>(k)]) {
            FakeKernel kernel;
            kernel.fail_at = k;
            kernel.fail_errno = EIO;
            auto disk = configfs(kernel).attach(request());
            REQUIRE_FALSE(disk.ok());
            CHECK(disk.error().code() == EIO);
            CHECK_THAT(disk.error().message(),
                       Catch::StartsWith("attach tcmu device 123 (try 1 of 1): " +
                                         steps[static_cast<std::size_t>(k)] + ": injected " +
                                         kAttachSequence[static_cast<std::size_t>(k)]));
            CHECK(kernel.leftovers().empty());
            // The log is exactly the sequence up to the failure, then its undo.
            std::vector<std::string> prefix(kAttachSequence.begin(),
                                            kAttachSequence.begin() + k + 1);
            CHECK(std::vector<std::string>(kernel.log.begin(), kernel.log.begin() + k + 1) ==
                  prefix);
        }
    }
}

TEST_CASE("a failed try is undone and the whole attach retried", "[tcmu]") {
    FakeKernel kernel;
    kernel.fail_at = 6;  // the first enable
    auto opts = fake_options();
    opts.attempts = 3;
    auto disk = configfs(kernel, opts).attach(request());
    REQUIRE(disk.ok());
    CHECK(kernel.count("mkdir " + kCore) == 2);
    CHECK(kernel.count("rmdir " + kCore) == 1);
    CHECK(kernel.slept == opts.retry_delay);
}

TEST_CASE("attach gives up after the configured number of tries", "[tcmu]") {
    FakeKernel kernel;
    kernel.disk_appears = false;
    auto opts = fake_options();
    opts.attempts = 3;
    auto disk = configfs(kernel, opts).attach(request());
    REQUIRE_FALSE(disk.ok());
    CHECK(disk.error().code() == ETIMEDOUT);
    CHECK_THAT(disk.error().message(), Catch::StartsWith("attach tcmu device 123 (try 3 of 3)"));
    CHECK(kernel.count("mkdir " + kCore) == 3);
    CHECK(kernel.count("rmdir " + kCore) == 3);
    CHECK(kernel.leftovers().empty());
    CHECK(kernel.slept >= 2 * opts.retry_delay + 3 * opts.disk_wait);
    CHECK(kernel.slept <=
          2 * opts.retry_delay + 3 * (opts.disk_wait + std::chrono::milliseconds(100)));
}

TEST_CASE("EAGAIN on enable is retried, then succeeds", "[tcmu]") {
    FakeKernel kernel;
    kernel.enable_eagain = 3;
    auto opts = fake_options();
    REQUIRE(configfs(kernel, opts).attach(request()).ok());
    CHECK(kernel.count("write " + kCore + "/enable 1") == 4);
    CHECK(kernel.count("mkdir " + kCore) == 1);
    CHECK(kernel.slept == 3 * opts.enable_retry_delay);
}

TEST_CASE("EAGAIN on enable is retried only a bounded number of times", "[tcmu]") {
    FakeKernel kernel;
    kernel.enable_eagain = 1000;
    auto opts = fake_options();
    opts.enable_eagain_retries = 5;
    auto disk = configfs(kernel, opts).attach(request());
    REQUIRE_FALSE(disk.ok());
    CHECK(disk.error().code() == EAGAIN);
    CHECK_THAT(disk.error().message(), Catch::Contains("enable tcmu device dev_123: injected") ||
                                           Catch::Contains("enable tcmu device dev_123: write"));
    CHECK(kernel.count("write " + kCore + "/enable 1") == 6);
    CHECK(kernel.leftovers().empty());
}

TEST_CASE("no disk is an error after a bounded wait, never a success", "[tcmu]") {
    FakeKernel kernel;
    kernel.disk_appears = false;
    auto opts = fake_options();
    auto disk = configfs(kernel, opts).attach(request());
    REQUIRE_FALSE(disk.ok());
    CHECK(disk.error().code() == ETIMEDOUT);
    CHECK_THAT(disk.error().message(), Catch::Contains("no block device under " + kSys +
                                                       "/class/scsi_device/0:0:1:0/device/block"));
    CHECK(kernel.slept >= opts.disk_wait);
    CHECK(kernel.slept <= opts.disk_wait + std::chrono::milliseconds(100));
    CHECK(kernel.leftovers().empty());
}

TEST_CASE("a disk in sysfs without its /dev node is not a success", "[tcmu]") {
    FakeKernel kernel;
    kernel.dev_node_appears = false;
    auto disk = configfs(kernel).attach(request());
    REQUIRE_FALSE(disk.ok());
    CHECK_THAT(disk.error().message(), Catch::Contains(kDev + "/sda does not"));
    CHECK(kernel.leftovers().empty());
}

TEST_CASE("attach never touches a device it did not make", "[tcmu]") {
    FakeKernel kernel;
    REQUIRE(configfs(kernel).attach(request()).ok());
    auto opts = fake_options();
    opts.attempts = 5;
    auto again = configfs(kernel, opts).attach(request());
    REQUIRE_FALSE(again.ok());
    CHECK(again.error().code() == EEXIST);
    CHECK(kernel.count("mkdir " + kCore) == 2);  // no retries
    CHECK(*configfs(kernel).find_attached("123") == kDev + "/sda");
}

TEST_CASE("attach rejects bad requests before touching configfs", "[tcmu]") {
    FakeKernel kernel;
    auto req = request();
    req.id = "12345678901234";
    CHECK(configfs(kernel).attach(req).error().code() == EINVAL);
    req = request();
    req.handler = "a/b";
    CHECK(configfs(kernel).attach(req).error().code() == EINVAL);
    req = request();
    req.config_path.clear();
    CHECK(configfs(kernel).attach(req).error().code() == EINVAL);
    CHECK(kernel.log.empty());
    CHECK(configfs(kernel).detach("x").error().code() == EINVAL);
}

TEST_CASE("two devices get their own targets and disks", "[tcmu]") {
    FakeKernel kernel;
    auto a = request();
    auto b = request();
    b.id = "7";
    REQUIRE(*configfs(kernel).attach(a) == kDev + "/sda");
    REQUIRE(*configfs(kernel).attach(b) == kDev + "/sdb");
    CHECK(*configfs(kernel).list_attached() == std::vector<std::string>{"123", "7"});
    REQUIRE(configfs(kernel).detach("123").ok());
    CHECK(*configfs(kernel).find_attached("7") == kDev + "/sdb");
    REQUIRE(configfs(kernel).detach("7").ok());
    CHECK(kernel.leftovers().empty());
}

TEST_CASE("attach can leave nl_reply_supported alone, as overlaybd does", "[tcmu]") {
    FakeKernel kernel;
    auto opts = fake_options();
    opts.skip_netlink_reply = false;
    REQUIRE(configfs(kernel, opts).attach(request()).ok());
    CHECK(kernel.count("write " + kCore + "/attrib/nl_reply_supported -1") == 0);
    CHECK(kernel.log.size() == kAttachSequence.size() - 1);
}

TEST_CASE("a kernel without nl_reply_supported is fine", "[tcmu]") {
    FakeKernel kernel;
    kernel.fail_at = 5;  // the nl_reply_supported write
    kernel.fail_errno = ENOENT;
    REQUIRE(configfs(kernel).attach(request()).ok());
}

TEST_CASE("a try whose cleanup fails is not retried, and the error says what is left", "[tcmu]") {
    FakeKernel kernel;
    kernel.disk_appears = false;
    kernel.fail_at =
        static_cast<int>(kAttachSequence.size()) + 4;  // cleanup's rmdir of the core device
    kernel.fail_errno = EBUSY;
    auto opts = fake_options();
    opts.attempts = 3;
    auto disk = configfs(kernel, opts).attach(request());
    REQUIRE_FALSE(disk.ok());
    CHECK(disk.error().code() == ETIMEDOUT);
    CHECK_THAT(disk.error().message(), Catch::Contains("cleanup failed: injected rmdir " + kCore));
    CHECK(kernel.count("mkdir " + kCore) == 1);
    CHECK(kernel.leftovers() == std::set<std::string>{kCore});
}

TEST_CASE("attach refuses configfs values that would add options or be cut", "[tcmu]") {
    FakeKernel kernel;
    for (const std::string& bad : std::vector<std::string>{"/c,dev_size=1", "/c\ndev_size=1",
                                                           "/c\x01", "/" + std::string(300, 'a')}) {
        auto req = request();
        req.config_path = bad;
        auto r = configfs(kernel).attach(req);
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code() == EINVAL);
        CHECK_THAT(r.error().message(), Catch::Contains("config"));
    }
    auto req = request();
    req.handler = "file,x";
    CHECK(configfs(kernel).attach(req).error().code() == EINVAL);
    CHECK(kernel.log.empty());
    // The operator's CLI goes through the same checks.
    auto fs = configfs(kernel);
    std::ostringstream out;
    std::ostringstream err;
    CHECK(tcmu::run_cli({"attach", "--id", "5", "--config", "/a,b"}, out, err, fs) == 1);
    CHECK_THAT(err.str(), Catch::Contains("','"));
    CHECK(kernel.log.empty());
}

TEST_CASE(
    "with no handler running, attach fails after handler_wait, untried again, leaving nothing",
    "[tcmu]") {
    for (const std::string handler : {"qcow", "overlaybd"}) {
        DYNAMIC_SECTION("handler " << handler) {
            FakeKernel kernel;
            kernel.handler_running = false;
            auto opts = fake_options();
            opts.attempts = 5;
            auto req = request();
            req.handler = handler;
            auto disk = configfs(kernel, opts).attach(req);
            REQUIRE_FALSE(disk.ok());
            CHECK(disk.error().code() == ETIMEDOUT);
            const std::string backstore = handler == "qcow" ? "tcmu-runner" : "overlaybd-tcmu";
            CHECK(disk.error().message() ==
                  "attach tcmu device 123 (try 1 of 5): wait for a userspace handler to take "
                  "dev_123: timed out (no process opened " +
                      kDev + "/uio0 within 3000 ms: no " + handler +
                      " handler serves TCMU devices here; start " + backstore +
                      ", the backstore of the " + handler + " handler, and attach again)");
            CHECK(kernel.count("mkdir " + kCore) == 1);  // no second try
            CHECK(kernel.leftovers().empty());
            // Nothing was exported, so no SCSI scan ever waited on the device.
            for (const std::string& entry : kernel.log) {
                CHECK_FALSE(starts_with(entry, "mkdir " + kCfg + "/target/loopback/"));
                CHECK_FALSE(starts_with(entry, "symlink"));
            }
            CHECK(kernel.slept >= opts.handler_wait);
            CHECK(kernel.slept <= opts.handler_wait + opts.handler_poll);
        }
    }
}

TEST_CASE("a handler that takes the device within handler_wait is waited for", "[tcmu]") {
    FakeKernel kernel;
    kernel.handler_delay = std::chrono::milliseconds(1500);
    auto opts = fake_options();
    REQUIRE(*configfs(kernel, opts).attach(request()) == kDev + "/sda");
    CHECK(kernel.slept >= kernel.handler_delay);
    CHECK(kernel.slept < kernel.handler_delay + 2 * opts.handler_poll);
    // It looked every handler_poll, not in a tight loop.
    CHECK(kernel.opener_calls <= kernel.handler_delay / opts.handler_poll + 2);
}

TEST_CASE("the handler must hold the device for handler_settle", "[tcmu]") {
    auto opts = fake_options();
    opts.handler_settle = std::chrono::milliseconds(200);
    SECTION("held throughout: attached after the settle") {
        FakeKernel kernel;
        REQUIRE(configfs(kernel, opts).attach(request()).ok());
        CHECK(kernel.slept >= opts.handler_settle);
        CHECK(kernel.slept < opts.handler_settle + 2 * opts.handler_poll);
    }
    SECTION("opened and closed again (its handler could not open the config): a failure") {
        FakeKernel kernel;
        kernel.handler_closes_after = std::chrono::milliseconds(60);
        opts.attempts = 3;
        auto disk = configfs(kernel, opts).attach(request());
        REQUIRE_FALSE(disk.ok());
        CHECK(disk.error().code() == ETIMEDOUT);
        CHECK_THAT(disk.error().message(),
                   Catch::Contains("pid 4321 (fake-runner) opened " + kDev +
                                   "/uio0 but closed it again: its overlaybd handler could not "
                                   "open the config; see overlaybd-tcmu's log"));
        CHECK(kernel.count("mkdir " + kCore) == 1);
        CHECK(kernel.leftovers().empty());
        CHECK(kernel.slept <= opts.handler_wait + opts.handler_settle + opts.handler_poll);
    }
}

TEST_CASE("a failure to look for the handler is an error, and undone", "[tcmu]") {
    FakeKernel kernel;
    kernel.opener_errno = EACCES;
    auto disk = configfs(kernel).attach(request());
    REQUIRE_FALSE(disk.ok());
    CHECK(disk.error().code() == EACCES);
    CHECK_THAT(disk.error().message(),
               Catch::Contains("wait for a userspace handler to take dev_123: look for the "
                               "process holding " +
                               kDev + "/uio0: open /proc"));
    CHECK(kernel.leftovers().empty());
}

TEST_CASE("a serial is written first, before anything else configures the device", "[tcmu]") {
    FakeKernel kernel;
    auto req = request();
    req.serial = tcmu::owner_serial("0123456789abcdef", "123");
    REQUIRE(configfs(kernel).attach(req).ok());
    REQUIRE(kernel.log.size() == kAttachSequence.size() + 1);
    CHECK(kernel.log[2] ==
          "write " + kCore + "/wwn/vpd_unit_serial WRENN-TCMU-0123456789abcdef-123");
    CHECK(*configfs(kernel).attached_serial("123") == "WRENN-TCMU-0123456789abcdef-123");
    CHECK(configfs(kernel).attached_serial("7").error().code() == ENOENT);

    auto bad = request();
    bad.serial = "has space";
    CHECK(configfs(kernel).attach(bad).error().code() == EINVAL);
    bad.serial = std::string(254, 'a');
    CHECK(configfs(kernel).attach(bad).error().code() == EINVAL);
}

// ---- A device left half-made by a killed attach. --------------------------------------------

TEST_CASE("attach returns the disk only once it can be opened", "[tcmu]") {
    FakeKernel kernel;
    kernel.disk_opens_after_polls = 3;  // the node is there, the disk not live yet: ENXIO
    auto disk = configfs(kernel).attach(request());
    REQUIRE(disk.ok());
    CHECK(kernel.disk_opens_after_polls == 0);
    CHECK(kernel.slept == 3 * std::chrono::milliseconds(50));
}
