#pragma once

// A fake configfs for tcmu's unit tests, that acts as the kernel would: mkdir of a core device or
// a tpg makes its attribute files, writing the nexus gives an address, linking the LUN makes a
// disk. Also the options, request and configfs sequences the tests share.

#include <algorithm>
#include <chrono>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "tcmu/configfs.hpp"
#include "tcmu/configfs/naming.hpp"

namespace wrenn::tcmu::testing {

inline const std::string kCfg = "/fake/config";
inline const std::string kSys = "/fake/sys";
inline const std::string kDev = "/fake/dev";

inline bool starts_with(const std::string& s, const std::string& prefix) {
    return s.rfind(prefix, 0) == 0;
}
inline bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() &&
           s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
inline std::string parent_of(const std::string& path) {
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

inline tcmu::ConfigfsOptions fake_options() {
    tcmu::ConfigfsOptions opts;
    opts.configfs_root = kCfg;
    opts.sys_root = kSys;
    opts.dev_root = kDev;
    opts.attempts = 1;
    opts.retry_delay = std::chrono::milliseconds(1000);
    opts.disk_wait = std::chrono::milliseconds(2000);
    opts.handler_settle = std::chrono::milliseconds(0);  // the settle has tests of its own
    return opts;
}

inline tcmu::AttachRequest request() {
    tcmu::AttachRequest req;
    req.id = "123";
    req.config_path = "/cfgs/a/config.v1.json";
    req.size_bytes = 4096;
    req.cmd_time_out_s = 7;
    return req;
}

inline const std::string kCore = kCfg + "/target/core/user_999999999/dev_123";
inline const std::string kTarget = kCfg + "/target/loopback/naa.1990000000000123";

inline const std::vector<std::string> kAttachSequence = {
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

inline const std::vector<std::string> kDetachSequence = {
    "read " + kTarget + "/tpgt_1/address",  // to find the disk and check its holders
    "unlink " + kTarget + "/tpgt_1/lun/lun_0/dev_123",
    "rmdir " + kTarget + "/tpgt_1/lun/lun_0",
    "rmdir " + kTarget + "/tpgt_1",
    "rmdir " + kTarget,
    "rmdir " + kCore,
};

// A Configfs over the fake, at its fake roots.
inline tcmu::Configfs configfs(FakeKernel& kernel, tcmu::ConfigfsOptions options = fake_options()) {
    return tcmu::Configfs(kernel, std::move(options));
}

}  // namespace wrenn::tcmu::testing
