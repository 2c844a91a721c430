// attach/detach over a fake configfs that acts as the kernel would: mkdir of a core device or a
// tpg makes its attribute files, writing the nexus gives an address, linking the LUN makes a disk.
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "tcmu/cli.hpp"
#include "tcmu/configfs.hpp"
#include "tcmu/naming.hpp"

namespace tcmu = wrenn::tcmu;
using wrenn::Error;
using wrenn::Result;

namespace {

const std::string kCfg = "/fake/config";
const std::string kSys = "/fake/sys";
const std::string kDev = "/fake/dev";

bool starts_with(const std::string& s, const std::string& prefix) {
    return s.rfind(prefix, 0) == 0;
}
bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() &&
           s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
std::string parent_of(const std::string& path) {
    return path.substr(0, path.rfind('/'));
}

// What FakeKernel throws at kill_at: a process killed (SIGKILL) in the middle of an attach.
struct Killed {};

// An in-memory configfs + sysfs + /dev. Records every mkdir/write/read/symlink/unlink/rmdir in
// order; the operation with index fail_at fails with fail_errno (once).
class FakeKernel final : public tcmu::ConfigfsOps {
  public:
    enum class Type { dir, file, link };
    struct Node {
        Type type;
        std::string content;
        bool by_kernel;  // made by the kernel: removed with its folder, never by the user
    };

    std::map<std::string, Node> nodes;
    std::vector<std::string> log;
    int fail_at = -1;
    int fail_errno = EIO;
    int enable_eagain = 0;     // this many writes to enable fail with EAGAIN first
    bool disk_appears = true;  // linking the LUN makes a disk
    bool dev_node_appears = true;
    std::chrono::steady_clock::time_point clock{};
    std::chrono::milliseconds slept{0};
    int next_target = 1;
    std::set<std::string> busy;  // /dev nodes mounted or open exclusively
    // The userspace handler: when it runs, it opens a device's UIO node handler_delay after
    // enable, and (handler_closes_after) may close it again, as tcmu-runner does when its
    // handler cannot open the config.
    bool handler_running = true;
    std::chrono::milliseconds handler_delay{0};
    std::optional<std::chrono::milliseconds> handler_closes_after;
    int opener_errno = 0;  // char_device_opener fails with this
    int opener_calls = 0;
    int kill_at = -1;  // the operation with this index throws Killed instead of happening

    FakeKernel() {
        for (const std::string& d : {kCfg, kCfg + "/target", kCfg + "/target/core", kSys, kDev}) {
            nodes[d] = {Type::dir, "", true};
        }
    }

    // What the user (attach) made, excluding the folders shared by all devices.
    [[nodiscard]] std::set<std::string> leftovers() const {
        std::set<std::string> out;
        for (const auto& [path, node] : nodes) {
            bool shared =
                path == kCfg + "/" + tcmu::hba_dir() || path == kCfg + "/" + tcmu::loopback_dir();
            // A UIO node lives exactly as long as its core device, which is listed.
            const bool uio = starts_with(path, kSys + "/class/uio/");
            if (!shared && !uio &&
                (!node.by_kernel || starts_with(path, kSys + "/class") ||
                 starts_with(path, kDev + "/"))) {
                out.insert(path);
            }
        }
        return out;
    }

    [[nodiscard]] int count(const std::string& entry) const {
        return static_cast<int>(std::count(log.begin(), log.end(), entry));
    }

    Result<void> make_dir(const std::string& path) override {
        if (auto e = record("mkdir " + path)) {
            return *e;
        }
        if (!is(parent_of(path), Type::dir)) {
            return Error("mkdir " + path, ENOENT);
        }
        if (nodes.count(path) != 0) {
            return Error("mkdir " + path, EEXIST);
        }
        nodes[path] = {Type::dir, "", false};
        if (starts_with(path, kCfg + "/" + tcmu::hba_dir() + "/dev_")) {
            for (const char* f : {"/control", "/enable", "/info"}) {
                nodes[path + f] = {Type::file, "", true};
            }
            nodes[path + "/attrib"] = {Type::dir, "", true};
            nodes[path + "/attrib/cmd_time_out"] = {Type::file, "30\n", true};
            nodes[path + "/attrib/dev_config"] = {Type::file, "\n", true};
            nodes[path + "/attrib/dev_size"] = {Type::file, "0\n", true};
            nodes[path + "/attrib/nl_reply_supported"] = {Type::file, "0\n", true};
            nodes[path + "/enable"] = {Type::file, "0\n", true};
            nodes[path + "/wwn"] = {Type::dir, "", true};
            nodes[path + "/wwn/vpd_unit_serial"] = {Type::file, "T10 VPD Unit Serial Number: \n",
                                                    true};
        } else if (ends_with(path, "/tpgt_1")) {
            nodes[path + "/nexus"] = {Type::file, "", true};
            nodes[path + "/address"] = {Type::file, "", true};
            nodes[path + "/lun"] = {Type::dir, "", true};
        }
        return {};
    }

    Result<void> remove_dir(const std::string& path) override {
        if (auto e = record("rmdir " + path)) {
            return *e;
        }
        if (!is(path, Type::dir)) {
            return Error("rmdir " + path, ENOENT);
        }
        for (const auto& [p, node] : nodes) {
            if (starts_with(p, path + "/") && !node.by_kernel) {
                return Error("rmdir " + path, ENOTEMPTY);
            }
        }
        erase_tree(path);
        if (auto it = uios.find(path); it != uios.end()) {
            erase_tree(kSys + "/class/uio/uio" + std::to_string(it->second.minor));
            uios.erase(it);
        }
        return {};
    }

    Result<void> write_file(const std::string& path, std::string_view value) override {
        if (auto e = record("write " + path + " " + std::string(value))) {
            return *e;
        }
        if (!is(path, Type::file)) {
            return Error("open " + path, ENOENT);
        }
        if (ends_with(path, "/enable") && enable_eagain > 0) {
            --enable_eagain;
            return Error("write " + path, EAGAIN);
        }
        if (ends_with(path, "/control") && starts_with(std::string(value), "dev_config=")) {
            nodes[parent_of(path) + "/attrib/dev_config"].content =
                std::string(value.substr(11)) + "\n";
        }
        if (ends_with(path, "/control") && starts_with(std::string(value), "dev_size=")) {
            nodes[parent_of(path) + "/attrib/dev_size"].content =
                std::string(value.substr(9)) + "\n";
        }
        if (ends_with(path, "/wwn/vpd_unit_serial")) {
            nodes[path].content = "T10 VPD Unit Serial Number: " + std::string(value) + "\n";
            return {};
        }
        if (ends_with(path, "/enable")) {
            // tcmu_configure_device registers the UIO device during the write.
            const std::string core = parent_of(path);
            const int minor = next_uio++;
            const std::string uio = kSys + "/class/uio/uio" + std::to_string(minor);
            std::string config = nodes[core + "/attrib/dev_config"].content;
            config.pop_back();
            nodes[uio + "/name"] = {Type::file,
                                    "tcm-user/999999999/" + core.substr(core.rfind('/') + 1) +
                                        (config.empty() ? "" : "/" + config) + "\n",
                                    true};
            nodes[uio + "/dev"] = {Type::file, "246:" + std::to_string(minor) + "\n", true};
            uios[core] = {minor, clock};
            nodes[path].content = "1\n";
            return {};
        }
        if (ends_with(path, "/nexus")) {
            nodes[parent_of(path) + "/address"].content =
                "0:0:" + std::to_string(next_target++) + "\n";
        }
        nodes[path].content = value;
        return {};
    }

    Result<std::string> read_file(const std::string& path) override {
        if (auto e = record("read " + path)) {
            return *e;
        }
        if (!is(path, Type::file)) {
            return Error("open " + path, ENOENT);
        }
        return nodes[path].content;
    }

    Result<void> make_symlink(const std::string& target, const std::string& link) override {
        if (auto e = record("symlink " + link + " -> " + target)) {
            return *e;
        }
        if (!is(parent_of(link), Type::dir) || nodes.count(target) == 0) {
            return Error("symlink " + link, ENOENT);
        }
        if (nodes.count(link) != 0) {
            return Error("symlink " + link, EEXIST);
        }
        nodes[link] = {Type::link, target, false};
        std::string address = nodes[parent_of(parent_of(parent_of(link))) + "/address"].content;
        if (disk_appears && !address.empty()) {
            address.pop_back();
            std::string disk = "sd" + std::string(1, static_cast<char>('a' + next_target - 2));
            nodes[kSys + "/class/scsi_device/" + address + ":0/device/block/" + disk] = {Type::dir,
                                                                                         "", true};
            if (dev_node_appears) {
                nodes[kDev + "/" + disk] = {Type::file, "", true};
            }
            disks[link] = {kSys + "/class/scsi_device/" + address + ":0", kDev + "/" + disk};
        }
        return {};
    }

    Result<void> remove_link(const std::string& path) override {
        if (auto e = record("unlink " + path)) {
            return *e;
        }
        if (!is(path, Type::link)) {
            return Error("unlink " + path, ENOENT);
        }
        nodes.erase(path);
        if (auto it = disks.find(path); it != disks.end()) {
            erase_tree(it->second.first);
            nodes.erase(it->second.second);
            disks.erase(it);
        }
        return {};
    }

    Result<std::vector<std::string>> list_dir(const std::string& path) override {
        std::set<std::string> names;
        for (const auto& [p, node] : nodes) {
            if (starts_with(p, path + "/")) {
                std::string rest = p.substr(path.size() + 1);
                names.insert(rest.substr(0, rest.find('/')));
            }
        }
        if (names.empty() && !is(path, Type::dir)) {
            return Error("open " + path, ENOENT);
        }
        return std::vector<std::string>(names.begin(), names.end());
    }

    bool exists(const std::string& path) override {
        if (nodes.count(path) != 0) {
            return true;
        }
        auto it = nodes.lower_bound(path + "/");
        return it != nodes.end() && starts_with(it->first, path + "/");
    }

    int disk_opens_after_polls = 0;  // open_shared gives ENXIO this many times first
    Result<void> open_shared(const std::string& device) override {
        if (nodes.count(device) == 0) {
            return Error("open " + device, ENOENT);
        }
        if (disk_opens_after_polls > 0) {
            --disk_opens_after_polls;
            return Error("open " + device, ENXIO);
        }
        return {};
    }

    Result<void> open_exclusive(const std::string& device) override {
        if (nodes.count(device) == 0) {
            return Error("open " + device, ENOENT);
        }
        if (busy.count(device) != 0) {
            return Error("open " + device + " exclusively", EBUSY);
        }
        return {};
    }

    Result<std::optional<Opener>> char_device_opener(unsigned major, unsigned minor) override {
        ++opener_calls;
        if (opener_errno != 0) {
            return Error("open /proc", opener_errno);
        }
        for (const auto& [core, uio] : uios) {
            if (major != 246 || static_cast<int>(minor) != uio.minor || !handler_running) {
                continue;
            }
            const auto opened = uio.enabled_at + handler_delay;
            if (clock >= opened &&
                (!handler_closes_after || clock < opened + *handler_closes_after)) {
                return std::optional<Opener>(Opener{4321, "fake-runner"});
            }
        }
        return std::optional<Opener>();
    }

    std::chrono::steady_clock::time_point now() override { return clock; }
    void sleep_for(std::chrono::milliseconds d) override {
        clock += d;
        slept += d;
    }

  private:
    std::map<std::string, std::pair<std::string, std::string>>
        disks;  // link -> (scsi dir, dev node)
    struct Uio {
        int minor;
        std::chrono::steady_clock::time_point enabled_at;
    };
    std::map<std::string, Uio> uios;  // core device -> its UIO node
    int next_uio = 0;

    std::optional<Error> record(std::string entry) {
        int index = static_cast<int>(log.size());
        log.push_back(entry);
        if (index == kill_at) {
            throw Killed{};  // the attacher dies here: nothing after it runs, no cleanup
        }
        if (index == fail_at) {
            return Error("injected " + entry, fail_errno);
        }
        return std::nullopt;
    }
    bool is(const std::string& path, Type type) const {
        auto it = nodes.find(path);
        return it != nodes.end() && it->second.type == type;
    }
    void erase_tree(const std::string& path) {
        for (auto it = nodes.begin(); it != nodes.end();) {
            it = it->first == path || starts_with(it->first, path + "/") ? nodes.erase(it)
                                                                         : std::next(it);
        }
    }
};

tcmu::AttachOptions fake_options() {
    tcmu::AttachOptions opts;
    opts.configfs_root = kCfg;
    opts.sys_root = kSys;
    opts.dev_root = kDev;
    opts.attempts = 1;
    opts.retry_delay = std::chrono::milliseconds(1000);
    opts.disk_wait = std::chrono::milliseconds(2000);
    opts.handler_settle = std::chrono::milliseconds(0);  // the settle has tests of its own
    return opts;
}

tcmu::AttachRequest request() {
    tcmu::AttachRequest req;
    req.id = "123";
    req.config_path = "/cfgs/a/config.v1.json";
    req.size_bytes = 4096;
    req.cmd_time_out_s = 7;
    return req;
}

const std::string kCore = kCfg + "/target/core/user_999999999/dev_123";
const std::string kTarget = kCfg + "/target/loopback/naa.1990000000000123";

const std::vector<std::string> kAttachSequence = {
    "mkdir " + kCfg + "/target/core/user_999999999",
    "mkdir " + kCore,
    "write " + kCore + "/control dev_config=overlaybd//cfgs/a/config.v1.json",
    "write " + kCore + "/control max_data_area_mb=4",
    "write " + kCore + "/control dev_size=4096",
    "write " + kCore + "/attrib/nl_reply_supported -1",
    "write " + kCore + "/enable 1",
    "write " + kCore + "/attrib/cmd_time_out 7",
    "read " + kSys + "/class/uio/uio0/name",
    "read " + kSys + "/class/uio/uio0/dev",
    "mkdir " + kCfg + "/target/loopback",
    "mkdir " + kTarget,
    "mkdir " + kTarget + "/tpgt_1",
    "mkdir " + kTarget + "/tpgt_1/lun/lun_0",
    "write " + kTarget + "/tpgt_1/nexus naa.1990000000000123",
    "symlink " + kTarget + "/tpgt_1/lun/lun_0/dev_123 -> " + kCore,
    "read " + kTarget + "/tpgt_1/address",
};

const std::vector<std::string> kDetachSequence = {
    "read " + kTarget + "/tpgt_1/address",  // to find the disk and check its holders
    "unlink " + kTarget + "/tpgt_1/lun/lun_0/dev_123",
    "rmdir " + kTarget + "/tpgt_1/lun/lun_0",
    "rmdir " + kTarget + "/tpgt_1",
    "rmdir " + kTarget,
    "rmdir " + kCore,
};

}  // namespace

TEST_CASE("attach runs overlaybd-attacher's configfs sequence and returns the disk", "[tcmu]") {
    FakeKernel kernel;
    auto disk = tcmu::attach(kernel, request(), fake_options());
    REQUIRE(disk.ok());
    CHECK(*disk == kDev + "/sda");
    CHECK(kernel.log == kAttachSequence);

    CHECK(*tcmu::find_attached(kernel, "123", fake_options()) == kDev + "/sda");
    CHECK(*tcmu::list_attached(kernel, fake_options()) == std::vector<std::string>{"123"});
    CHECK(*tcmu::attached_config(kernel, "123", fake_options()) == "/cfgs/a/config.v1.json");
}

TEST_CASE("attach leaves out dev_size and cmd_time_out when not asked for", "[tcmu]") {
    FakeKernel kernel;
    auto req = request();
    req.size_bytes.reset();
    req.cmd_time_out_s = 0;
    req.handler = "qcow";
    req.config_path = "/scratch/img.qcow2";
    REQUIRE(tcmu::attach(kernel, req, fake_options()).ok());
    CHECK(kernel.count("write " + kCore + "/control dev_config=qcow//scratch/img.qcow2") == 1);
    for (const std::string& entry : kernel.log) {
        CHECK_FALSE(entry.find("dev_size") != std::string::npos);
        CHECK_FALSE(entry.find("cmd_time_out") != std::string::npos);
    }
}

TEST_CASE("detach removes everything in reverse order and is idempotent", "[tcmu]") {
    FakeKernel kernel;
    REQUIRE(tcmu::attach(kernel, request(), fake_options()).ok());
    kernel.log.clear();
    REQUIRE(tcmu::detach(kernel, "123", fake_options()).ok());
    CHECK(kernel.log == kDetachSequence);
    CHECK(kernel.leftovers().empty());
    CHECK_FALSE(tcmu::find_attached(kernel, "123", fake_options())->has_value());
    CHECK(tcmu::list_attached(kernel, fake_options())->empty());

    kernel.log.clear();
    CHECK(tcmu::detach(kernel, "123", fake_options()).ok());
    CHECK(kernel.log == kDetachSequence);
    CHECK(tcmu::detach(kernel, "999", fake_options()).ok());  // never attached
}

TEST_CASE("detach reports a failure other than a missing part, with its path", "[tcmu]") {
    FakeKernel kernel;
    REQUIRE(tcmu::attach(kernel, request(), fake_options()).ok());
    kernel.fail_at = static_cast<int>(kernel.log.size()) + 5;  // rmdir of the core device
    kernel.fail_errno = EBUSY;
    auto r = tcmu::detach(kernel, "123", fake_options());
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code() == EBUSY);
    CHECK_THAT(r.error().message(),
               Catch::StartsWith("detach tcmu device 123: injected rmdir " + kCore));
    CHECK(tcmu::detach(kernel, "123", fake_options()).ok());  // the next try finishes the job
    CHECK(kernel.leftovers().empty());
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
            auto disk = tcmu::attach(kernel, request(), fake_options());
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
    auto disk = tcmu::attach(kernel, request(), opts);
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
    auto disk = tcmu::attach(kernel, request(), opts);
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
    REQUIRE(tcmu::attach(kernel, request(), opts).ok());
    CHECK(kernel.count("write " + kCore + "/enable 1") == 4);
    CHECK(kernel.count("mkdir " + kCore) == 1);
    CHECK(kernel.slept == 3 * opts.enable_retry_delay);
}

TEST_CASE("EAGAIN on enable is retried only a bounded number of times", "[tcmu]") {
    FakeKernel kernel;
    kernel.enable_eagain = 1000;
    auto opts = fake_options();
    opts.enable_eagain_retries = 5;
    auto disk = tcmu::attach(kernel, request(), opts);
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
    auto disk = tcmu::attach(kernel, request(), opts);
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
    auto disk = tcmu::attach(kernel, request(), fake_options());
    REQUIRE_FALSE(disk.ok());
    CHECK_THAT(disk.error().message(), Catch::Contains(kDev + "/sda does not"));
    CHECK(kernel.leftovers().empty());
}

TEST_CASE("attach never touches a device it did not make", "[tcmu]") {
    FakeKernel kernel;
    REQUIRE(tcmu::attach(kernel, request(), fake_options()).ok());
    auto opts = fake_options();
    opts.attempts = 5;
    auto again = tcmu::attach(kernel, request(), opts);
    REQUIRE_FALSE(again.ok());
    CHECK(again.error().code() == EEXIST);
    CHECK(kernel.count("mkdir " + kCore) == 2);  // no retries
    CHECK(*tcmu::find_attached(kernel, "123", fake_options()) == kDev + "/sda");
}

TEST_CASE("attach rejects bad requests before touching configfs", "[tcmu]") {
    FakeKernel kernel;
    auto req = request();
    req.id = "12345678901234";
    CHECK(tcmu::attach(kernel, req, fake_options()).error().code() == EINVAL);
    req = request();
    req.handler = "a/b";
    CHECK(tcmu::attach(kernel, req, fake_options()).error().code() == EINVAL);
    req = request();
    req.config_path.clear();
    CHECK(tcmu::attach(kernel, req, fake_options()).error().code() == EINVAL);
    CHECK(kernel.log.empty());
    CHECK(tcmu::detach(kernel, "x", fake_options()).error().code() == EINVAL);
}

TEST_CASE("two devices get their own targets and disks", "[tcmu]") {
    FakeKernel kernel;
    auto a = request();
    auto b = request();
    b.id = "7";
    REQUIRE(*tcmu::attach(kernel, a, fake_options()) == kDev + "/sda");
    REQUIRE(*tcmu::attach(kernel, b, fake_options()) == kDev + "/sdb");
    CHECK(*tcmu::list_attached(kernel, fake_options()) == std::vector<std::string>{"123", "7"});
    REQUIRE(tcmu::detach(kernel, "123", fake_options()).ok());
    CHECK(*tcmu::find_attached(kernel, "7", fake_options()) == kDev + "/sdb");
    REQUIRE(tcmu::detach(kernel, "7", fake_options()).ok());
    CHECK(kernel.leftovers().empty());
}

TEST_CASE("attach appends what it did to overlaybd's result file", "[tcmu]") {
    std::string tmpl = (std::filesystem::temp_directory_path() / "wrenn-tcmu-XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    std::filesystem::path dir = tmpl;
    std::ofstream(dir / "config.v1.json") << R"({"lowers": [], "resultFile": "result"})";
    FakeKernel kernel;
    kernel.disk_appears = false;
    auto req = request();
    req.config_path = (dir / "config.v1.json").string();
    REQUIRE_FALSE(tcmu::attach(kernel, req, fake_options()).ok());
    std::stringstream text;
    text << std::ifstream(dir / "result").rdbuf();
    std::filesystem::remove_all(dir);
    CHECK_THAT(text.str(), Catch::Contains("wrenn tcmu attach 123: mkdir " + kCore));
    CHECK_THAT(text.str(), Catch::Contains("failed: attach dev_123 as a disk"));
    CHECK_THAT(text.str(), Catch::Contains("cleanup: removed " + kCore));
}

TEST_CASE("the tcmu CLI attaches, detaches and explains its usage", "[tcmu]") {
    FakeKernel kernel;
    std::ostringstream out, err;
    int rc = tcmu::run_cli({"attach", "--id", "123", "--config", "/x/img.qcow2", "--handler",
                            "qcow", "--size", "1048576"},
                           out, err, kernel, fake_options());
    CHECK(rc == 0);
    CHECK(out.str() == kDev + "/sda\n");
    CHECK(kernel.count("write " + kCore + "/control dev_size=1048576") == 1);
    CHECK(kernel.count("write " + kCore + "/control dev_config=qcow//x/img.qcow2") == 1);

    out.str("");
    CHECK(tcmu::run_cli({"detach", "--id", "123", "-v"}, out, err, kernel, fake_options()) == 0);
    CHECK(spdlog::get_level() == spdlog::level::debug);
    spdlog::set_level(spdlog::level::info);
    CHECK(kernel.leftovers().empty());

    kernel.disk_appears = false;
    err.str("");
    CHECK(tcmu::run_cli({"attach", "--id", "5", "--config", "/x/c.json"}, out, err, kernel,
                        fake_options()) == 1);
    CHECK_THAT(err.str(), Catch::Contains("no block device"));

    err.str("");
    CHECK(tcmu::run_cli({"attach", "--id", "5"}, out, err, kernel, fake_options()) == 2);
    CHECK_THAT(err.str(), Catch::Contains("config"));
    CHECK(tcmu::run_cli({"detach"}, out, err, kernel, fake_options()) == 2);
    CHECK(tcmu::run_cli({"frobnicate"}, out, err, kernel, fake_options()) == 2);
    out.str("");
    CHECK(tcmu::run_cli({"--help"}, out, err, kernel, fake_options()) == 0);
    CHECK_THAT(out.str(), Catch::Contains("tcmu attach --id ID --config FILE"));
    out.str("");
    CHECK(tcmu::run_cli({"attach", "--help"}, out, err, kernel, fake_options()) == 0);
    CHECK_THAT(out.str(), Catch::Contains("--handler"));
}

TEST_CASE("attach can leave nl_reply_supported alone, as overlaybd does", "[tcmu]") {
    FakeKernel kernel;
    auto opts = fake_options();
    opts.skip_netlink_reply = false;
    REQUIRE(tcmu::attach(kernel, request(), opts).ok());
    CHECK(kernel.count("write " + kCore + "/attrib/nl_reply_supported -1") == 0);
    CHECK(kernel.log.size() == kAttachSequence.size() - 1);
}

TEST_CASE("a kernel without nl_reply_supported is fine", "[tcmu]") {
    FakeKernel kernel;
    kernel.fail_at = 5;  // the nl_reply_supported write
    kernel.fail_errno = ENOENT;
    REQUIRE(tcmu::attach(kernel, request(), fake_options()).ok());
}

TEST_CASE("detach refuses while device-mapper holds the disk", "[tcmu]") {
    FakeKernel kernel;
    REQUIRE(*tcmu::attach(kernel, request(), fake_options()) == kDev + "/sda");
    kernel.nodes[kSys + "/class/block/sda/holders/dm-3"] = {FakeKernel::Type::link, "", true};
    kernel.log.clear();
    auto r = tcmu::detach(kernel, "123", fake_options());
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code() == EBUSY);
    CHECK(r.error().message() ==
          "detach tcmu device 123: device busy (" + kDev + "/sda is held by dm-3)");
    CHECK(kernel.count("unlink " + kTarget + "/tpgt_1/lun/lun_0/dev_123") == 0);
    kernel.nodes.erase(kSys + "/class/block/sda/holders/dm-3");
    CHECK(tcmu::detach(kernel, "123", fake_options()).ok());
}

TEST_CASE("a try whose cleanup fails is not retried, and the error says what is left", "[tcmu]") {
    FakeKernel kernel;
    kernel.disk_appears = false;
    kernel.fail_at =
        static_cast<int>(kAttachSequence.size()) + 4;  // cleanup's rmdir of the core device
    kernel.fail_errno = EBUSY;
    auto opts = fake_options();
    opts.attempts = 3;
    auto disk = tcmu::attach(kernel, request(), opts);
    REQUIRE_FALSE(disk.ok());
    CHECK(disk.error().code() == ETIMEDOUT);
    CHECK_THAT(disk.error().message(), Catch::Contains("cleanup failed: injected rmdir " + kCore));
    CHECK(kernel.count("mkdir " + kCore) == 1);
    CHECK(kernel.leftovers() == std::set<std::string>{kCore});
}

TEST_CASE("an attached id is reused only for the origin it was attached for", "[tcmu]") {
    FakeKernel kernel;
    REQUIRE(tcmu::attach(kernel, request(), fake_options()).ok());
    CHECK(tcmu::check_attached(kernel, "123", tcmu::identity_of(request()), fake_options()).ok());

    auto other = request();
    other.config_path = "/cfgs/b/config.v1.json";
    auto wrong = tcmu::check_attached(kernel, "123", tcmu::identity_of(other), fake_options());
    REQUIRE_FALSE(wrong.ok());
    CHECK(wrong.error().code() == EEXIST);
    CHECK_THAT(wrong.error().message(),
               Catch::Contains("\"overlaybd//cfgs/a/config.v1.json\"") &&
                   Catch::Contains("\"overlaybd//cfgs/b/config.v1.json\""));

    auto sized = request();
    sized.size_bytes = 8192;
    auto size = tcmu::check_attached(kernel, "123", tcmu::identity_of(sized), fake_options());
    REQUIRE_FALSE(size.ok());
    CHECK(size.error().code() == EEXIST);
    CHECK_THAT(size.error().message(),
               Catch::Contains("dev_size is 4096") && Catch::Contains("8192"));

    // An attach that finds the id taken by another origin says whose it is and touches nothing.
    kernel.log.clear();
    auto again = tcmu::attach(kernel, other, fake_options());
    REQUIRE_FALSE(again.ok());
    CHECK(again.error().code() == EEXIST);
    CHECK_THAT(again.error().message(), Catch::Contains("overlaybd//cfgs/a/config.v1.json"));
    CHECK(kernel.count("rmdir " + kCore) == 0);
    CHECK(*tcmu::find_attached(kernel, "123", fake_options()) == kDev + "/sda");
}

TEST_CASE("detach for an origin refuses a device attached for another", "[tcmu]") {
    FakeKernel kernel;
    REQUIRE(tcmu::attach(kernel, request(), fake_options()).ok());
    auto other = request();
    other.handler = "qcow";
    kernel.log.clear();
    auto r = tcmu::detach(kernel, "123", tcmu::identity_of(other), fake_options());
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code() == EEXIST);
    CHECK_THAT(r.error().message(), Catch::Contains("qcow//cfgs/a/config.v1.json"));
    for (const auto& entry : kernel.log) {
        CHECK_FALSE(starts_with(entry, "rmdir"));
        CHECK_FALSE(starts_with(entry, "unlink"));
    }
    CHECK(tcmu::detach(kernel, "123", tcmu::identity_of(request()), fake_options()).ok());
    CHECK(kernel.leftovers().empty());
    // Gone already: nothing to compare, and detaching again succeeds.
    CHECK(tcmu::detach(kernel, "123", tcmu::identity_of(other), fake_options()).ok());
}

TEST_CASE("detach refuses while the disk is mounted or open exclusively", "[tcmu]") {
    FakeKernel kernel;
    REQUIRE(*tcmu::attach(kernel, request(), fake_options()) == kDev + "/sda");
    kernel.busy.insert(kDev + "/sda");
    kernel.log.clear();
    auto r = tcmu::detach(kernel, "123", tcmu::identity_of(request()), fake_options());
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code() == EBUSY);
    CHECK_THAT(r.error().message(), Catch::Contains(kDev + "/sda is mounted or open exclusively"));
    CHECK(kernel.count("unlink " + kTarget + "/tpgt_1/lun/lun_0/dev_123") == 0);
    CHECK(tcmu::detach(kernel, "123", fake_options()).error().code() == EBUSY);
    kernel.busy.clear();
    CHECK(tcmu::detach(kernel, "123", fake_options()).ok());
}

TEST_CASE("attach refuses configfs values that would add options or be cut", "[tcmu]") {
    FakeKernel kernel;
    for (const std::string& bad : std::vector<std::string>{"/c,dev_size=1", "/c\ndev_size=1",
                                                           "/c\x01", "/" + std::string(300, 'a')}) {
        auto req = request();
        req.config_path = bad;
        auto r = tcmu::attach(kernel, req, fake_options());
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code() == EINVAL);
        CHECK_THAT(r.error().message(), Catch::Contains("config"));
    }
    auto req = request();
    req.handler = "file,x";
    CHECK(tcmu::attach(kernel, req, fake_options()).error().code() == EINVAL);
    CHECK(kernel.log.empty());
    // The operator's CLI goes through the same checks.
    std::ostringstream out;
    std::ostringstream err;
    CHECK(tcmu::run_cli({"attach", "--id", "5", "--config", "/a,b"}, out, err, kernel,
                        fake_options()) == 1);
    CHECK_THAT(err.str(), Catch::Contains("','"));
    CHECK(kernel.log.empty());
}

namespace {

// A config folder for API attaches: allowed/cfg/config.v1.json, with a sentinel outside.
struct ApiConfigTree {
    std::filesystem::path root;
    std::filesystem::path allowed, dir, config, outside;
    explicit ApiConfigTree(const std::string& result_file) {
        std::string tmpl = (std::filesystem::temp_directory_path() / "wrenn-tcmu-XXXXXX").string();
        REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
        root = tmpl;
        allowed = root / "allowed";
        dir = allowed / "cfg";
        std::filesystem::create_directories(dir);
        config = dir / "config.v1.json";
        std::ofstream(config) << R"({"lowers": [], "resultFile": ")" + result_file + R"("})";
        outside = root / "outside.log";
        std::ofstream(outside) << "sentinel\n";
    }
    ~ApiConfigTree() {
        std::error_code ec;
        std::filesystem::remove_all(root, ec);
    }
    [[nodiscard]] tcmu::AttachRequest request() const {
        auto req = ::request();
        req.config_path = config.string();
        tcmu::OriginPolicy policy;
        policy.config_dirs = {allowed.string()};
        policy.owner_uid = ::getuid();
        req.api_policy = policy;
        return req;
    }
    [[nodiscard]] static std::string read(const std::filesystem::path& p) {
        std::stringstream text;
        text << std::ifstream(p).rdbuf();
        return text.str();
    }
};

}  // namespace

TEST_CASE("an API attach logs to a resultFile inside the config's folder, 0600", "[tcmu]") {
    ApiConfigTree tree("result.log");
    FakeKernel kernel;
    kernel.disk_appears = false;
    REQUIRE_FALSE(tcmu::attach(kernel, tree.request(), fake_options()).ok());
    const auto text = ApiConfigTree::read(tree.dir / "result.log");
    CHECK_THAT(text, Catch::Contains("wrenn tcmu attach 123: mkdir " + kCore));
    struct stat st {};
    REQUIRE(::stat((tree.dir / "result.log").c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    CHECK(ApiConfigTree::read(tree.outside) == "sentinel\n");
}

TEST_CASE("an API attach never logs outside the config's folder", "[tcmu]") {
    // Absolute, "..", and through a symlink (final and intermediate): the log goes to
    // init-debug.log beside the config, or nowhere; the sentinel outside is untouched.
    for (const std::string hostile : {"OUTSIDE", "../../outside.log", "cfg/../../outside.log",
                                      "link.log", "linkdir/outside.log"}) {
        INFO(hostile);
        ApiConfigTree tree(hostile == "OUTSIDE" ? std::string("") : hostile);
        if (hostile == "OUTSIDE") {
            std::ofstream(tree.config) << R"({"resultFile": ")" + tree.outside.string() + R"("})";
        }
        std::filesystem::create_symlink(tree.outside, tree.dir / "link.log");
        std::filesystem::create_symlink(tree.root, tree.dir / "linkdir");
        struct stat before {};
        REQUIRE(::stat(tree.outside.c_str(), &before) == 0);
        FakeKernel kernel;
        REQUIRE(tcmu::attach(kernel, tree.request(), fake_options()).ok());
        CHECK(ApiConfigTree::read(tree.outside) == "sentinel\n");
        struct stat after {};
        REQUIRE(::stat(tree.outside.c_str(), &after) == 0);
        CHECK(after.st_mtim.tv_sec == before.st_mtim.tv_sec);
        CHECK(after.st_mtim.tv_nsec == before.st_mtim.tv_nsec);
        CHECK(after.st_size == before.st_size);
        if (hostile != "link.log" && hostile != "linkdir/outside.log") {
            CHECK_THAT(ApiConfigTree::read(tree.dir / "init-debug.log"),
                       Catch::Contains("wrenn tcmu attach 123:"));
        }
    }
}

TEST_CASE("an API attach does not create init-debug.log through a symlink", "[tcmu]") {
    ApiConfigTree tree("");
    std::filesystem::create_symlink(tree.root / "created-outside.log", tree.dir / "init-debug.log");
    FakeKernel kernel;
    REQUIRE(tcmu::attach(kernel, tree.request(), fake_options()).ok());
    CHECK_FALSE(std::filesystem::exists(tree.root / "created-outside.log"));
}

// ---- A userspace handler must take the device before it is exported. --------------------------

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
            auto disk = tcmu::attach(kernel, req, opts);
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
    REQUIRE(*tcmu::attach(kernel, request(), opts) == kDev + "/sda");
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
        REQUIRE(tcmu::attach(kernel, request(), opts).ok());
        CHECK(kernel.slept >= opts.handler_settle);
        CHECK(kernel.slept < opts.handler_settle + 2 * opts.handler_poll);
    }
    SECTION("opened and closed again (its handler could not open the config): a failure") {
        FakeKernel kernel;
        kernel.handler_closes_after = std::chrono::milliseconds(60);
        opts.attempts = 3;
        auto disk = tcmu::attach(kernel, request(), opts);
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
    auto disk = tcmu::attach(kernel, request(), fake_options());
    REQUIRE_FALSE(disk.ok());
    CHECK(disk.error().code() == EACCES);
    CHECK_THAT(disk.error().message(),
               Catch::Contains("wait for a userspace handler to take dev_123: look for the "
                               "process holding " +
                               kDev + "/uio0: open /proc"));
    CHECK(kernel.leftovers().empty());
}

TEST_CASE("the CLI without a backstore exits 1 naming the handler and the backstore", "[tcmu]") {
    FakeKernel kernel;
    kernel.handler_running = false;
    auto opts = fake_options();
    opts.attempts = 5;
    std::ostringstream out, err;
    CHECK(tcmu::run_cli({"attach", "--id", "4242", "--config", "/x/base.qcow2", "--handler", "qcow",
                         "--size", "33554432"},
                        out, err, kernel, opts) == 1);
    CHECK_THAT(err.str(), Catch::Contains("start tcmu-runner, the backstore of the qcow handler"));
    CHECK(kernel.slept <= opts.handler_wait + opts.handler_poll);
    CHECK(kernel.leftovers().empty());
}

// ---- The device's serial: the agent's mark. -----------------------------------------------------

TEST_CASE("a serial is written first, before anything else configures the device", "[tcmu]") {
    FakeKernel kernel;
    auto req = request();
    req.serial = tcmu::owner_serial("0123456789abcdef", "123");
    REQUIRE(tcmu::attach(kernel, req, fake_options()).ok());
    REQUIRE(kernel.log.size() == kAttachSequence.size() + 1);
    CHECK(kernel.log[2] ==
          "write " + kCore + "/wwn/vpd_unit_serial WRENN-TCMU-0123456789abcdef-123");
    CHECK(*tcmu::attached_serial(kernel, "123", fake_options()) ==
          "WRENN-TCMU-0123456789abcdef-123");
    CHECK(tcmu::attached_serial(kernel, "7", fake_options()).error().code() == ENOENT);

    auto bad = request();
    bad.serial = "has space";
    CHECK(tcmu::attach(kernel, bad, fake_options()).error().code() == EINVAL);
    bad.serial = std::string(254, 'a');
    CHECK(tcmu::attach(kernel, bad, fake_options()).error().code() == EINVAL);
}

// ---- A device left half-made by a killed attach. --------------------------------------------

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
                CHECK_THROWS_AS(tcmu::attach(kernel, req, fake_options()), Killed);
                kernel.kill_at = -1;
                const bool left_core = kernel.nodes.count(kCore) != 0;
                auto found = tcmu::inspect_existing(kernel, "123", fake_options());
                // Enabled and never exported: taken over where it stopped, not made again.
                const bool taken_over = found.ok() && found->enabled && !found->exported;
                if (tcmu::find_attached(kernel, "123", fake_options())->has_value()) {
                    // Killed after the kernel had finished the device (reading the address):
                    // attached, and the next attach says so instead of taking it over.
                    auto again = tcmu::attach(kernel, req, fake_options());
                    REQUIRE_FALSE(again.ok());
                    CHECK_THAT(again.error().message(),
                               Catch::Contains("in use by a device for this same origin; "
                                               "detach it first"));
                    REQUIRE(tcmu::detach(kernel, "123", fake_options()).ok());
                }
                kernel.log.clear();
                auto disk = tcmu::attach(kernel, req, fake_options());
                INFO((disk.ok() ? *disk : disk.error().message()));
                REQUIRE(disk.ok());
                CHECK(*tcmu::find_attached(kernel, "123", fake_options()) == *disk);
                if (taken_over) {
                    CHECK(kernel.count("rmdir " + kCore) == 0);
                    CHECK(kernel.count("write " + kCore + "/enable 1") == 0);
                } else if (left_core && k < static_cast<int>(steps) - 1) {
                    CHECK(kernel.count("rmdir " + kCore) == 1);  // the half-made one went first
                }
                REQUIRE(tcmu::detach(kernel, "123", fake_options()).ok());
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
            CHECK_THROWS_AS(tcmu::attach(kernel, req, fake_options()), Killed);
            kernel.kill_at = -1;
            auto swept = tcmu::detach_unused(kernel, "0123456789abcdef", {}, fake_options());
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
    CHECK_THROWS_AS(tcmu::attach(kernel, request(), fake_options()), Killed);
    kernel.kill_at = -1;
    std::string tmpl = (std::filesystem::temp_directory_path() / "wrenn-tcmu-XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    std::filesystem::path dir = tmpl;
    std::ofstream(dir / "config.v1.json") << R"({"lowers": [], "resultFile": "result"})";
    auto req = request();
    req.config_path = (dir / "config.v1.json").string();
    // The id is taken by the killed attach's device of another config: refused, untouched.
    auto other = tcmu::attach(kernel, req, fake_options());
    REQUIRE_FALSE(other.ok());
    CHECK(other.error().code() == EEXIST);
    CHECK(kernel.nodes.count(kCore) != 0);
    // The same request finds it half-made: removes it, says so, attaches.
    REQUIRE(tcmu::attach(kernel, request(), fake_options()).ok());
    CHECK(kernel.count("rmdir " + kCore) == 1);
    REQUIRE(tcmu::detach(kernel, "123", fake_options()).ok());
    // The log line goes to the attach log as well.
    kernel.kill_at = static_cast<int>(kernel.log.size()) + 3;  // after the first control write
    CHECK_THROWS_AS(tcmu::attach(kernel, req, fake_options()), Killed);
    kernel.kill_at = -1;
    REQUIRE(tcmu::attach(kernel, req, fake_options()).ok());
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
            CHECK_THROWS_AS(tcmu::attach(kernel, request(), fake_options()), Killed);
            kernel.kill_at = -1;
            kernel.log.clear();
            auto disk = tcmu::attach(kernel, request(), fake_options());
            INFO((disk.ok() ? *disk : disk.error().message()));
            REQUIRE(disk.ok());
            CHECK(*tcmu::find_attached(kernel, "123", fake_options()) == *disk);
            // The handler was told of this device once; it never sees it go and come back.
            CHECK(kernel.count("rmdir " + kCore) == 0);
            CHECK(kernel.count("write " + kCore + "/enable 1") == 0);
            CHECK(kernel.count("write " + kCore + "/control dev_size=4096") == 0);
            CHECK(kernel.count("write " + kCore + "/attrib/cmd_time_out 7") == 1);
            CHECK(kernel.count("symlink " + kTarget + "/tpgt_1/lun/lun_0/dev_123 -> " + kCore) ==
                  1);
            REQUIRE(tcmu::detach(kernel, "123", fake_options()).ok());
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
    CHECK_THROWS_AS(tcmu::attach(kernel, req, fake_options()), Killed);
    kernel.kill_at = -1;
    kernel.handler_running = false;
    auto disk = tcmu::attach(kernel, req, fake_options());
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
    CHECK_THROWS_AS(tcmu::attach(kernel, request(), fake_options()), Killed);
    kernel.kill_at = -1;
    kernel.handler_running = false;
    kernel.log.clear();
    auto opts = fake_options();
    opts.attempts = 5;
    auto again = tcmu::attach(kernel, request(), opts);
    REQUIRE_FALSE(again.ok());
    CHECK(again.error().code() == ETIMEDOUT);
    CHECK_THAT(again.error().message(), Catch::StartsWith("attach tcmu device 123 (try 2 of 5)"));
    CHECK(kernel.count("mkdir " + kCore) == 2);  // found taken, then made afresh
    CHECK(kernel.leftovers().empty());
}

// ---- Recovery's sweep of unused devices of ours. ----------------------------------------------

TEST_CASE("detach_unused detaches only our unused devices, never one in use or another's",
          "[tcmu]") {
    const std::string tag = "0123456789abcdef";
    FakeKernel kernel;
    auto attach = [&](const std::string& id, const std::string& serial) {
        auto req = request();
        req.id = id;
        req.serial = serial;
        auto disk = tcmu::attach(kernel, req, fake_options());
        REQUIRE(disk.ok());
        return *disk;
    };
    attach("1", tcmu::owner_serial(tag, "1"));                 // ours, unused: detached
    attach("2", tcmu::owner_serial(tag, "2"));                 // ours, held by a sandbox
    attach("3", tcmu::owner_serial("fedcba9876543210", "3"));  // another state dir's
    attach("4", "");                                           // the operator's, or overlaybd's
    const std::string held = attach("5", tcmu::owner_serial(tag, "5"));  // ours, dm holds it
    attach("6", tcmu::owner_serial(tag, "7"));  // our tag but another id's serial: not ours
    kernel.nodes[kSys + "/class/block/" + held.substr(held.rfind('/') + 1) + "/holders/dm-0"] = {
        FakeKernel::Type::link, "", true};

    auto swept = tcmu::detach_unused(kernel, tag, {"2"}, fake_options());
    REQUIRE(swept.ok());
    CHECK(swept->detached == std::vector<std::string>{"1"});
    REQUIRE(swept->left.size() == 1);
    CHECK(swept->left[0].code() == EBUSY);
    CHECK_THAT(swept->left[0].message(), Catch::Contains("is held by dm-0"));
    CHECK(*tcmu::list_attached(kernel, fake_options()) ==
          std::vector<std::string>{"2", "3", "4", "5", "6"});

    // Without a tag nothing is known to be ours.
    CHECK(tcmu::detach_unused(kernel, "", {}, fake_options())->detached.empty());
    CHECK(tcmu::list_attached(kernel, fake_options())->size() == 5);
}

TEST_CASE("the try that redoes a half-made device is an ordinary try, retried on failure",
          "[tcmu]") {
    FakeKernel kernel;
    kernel.kill_at = 4;  // after the first control write: a half-made device
    CHECK_THROWS_AS(tcmu::attach(kernel, request(), fake_options()), Killed);
    kernel.kill_at = -1;
    kernel.disk_appears = false;
    auto opts = fake_options();
    opts.attempts = 2;
    auto disk = tcmu::attach(kernel, request(), opts);
    REQUIRE_FALSE(disk.ok());
    CHECK(disk.error().code() == ETIMEDOUT);
    CHECK_THAT(disk.error().message(), Catch::StartsWith("attach tcmu device 123 (try 2 of 2)"));
    CHECK(kernel.count("mkdir " + kCore) == 4);  // killed, found taken, redone, retried
    CHECK(kernel.leftovers().empty());
}

TEST_CASE("attach returns the disk only once it can be opened", "[tcmu]") {
    FakeKernel kernel;
    kernel.disk_opens_after_polls = 3;  // the node is there, the disk not live yet: ENXIO
    auto disk = tcmu::attach(kernel, request(), fake_options());
    REQUIRE(disk.ok());
    CHECK(kernel.disk_opens_after_polls == 0);
    CHECK(kernel.slept == 3 * std::chrono::milliseconds(50));
}
