#include "tcmu/configfs.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <thread>

#include "common/file.hpp"
#include "common/unique_fd.hpp"
#include "tcmu/naming.hpp"

namespace wrenn::tcmu {

namespace {

// ---- The kernel side: the only place in wrenn-agent that writes to configfs. ----------------

// ConfigfsOps on the real file system: plain syscalls, fds O_CLOEXEC and closed on every path.
class RealConfigfsOps final : public ConfigfsOps {
  public:
    Result<void> make_dir(const std::string& path) override {
        if (::mkdir(path.c_str(), 0755) != 0) {
            return errno_error("mkdir " + path);
        }
        return success();
    }

    Result<void> remove_dir(const std::string& path) override {
        if (::rmdir(path.c_str()) != 0) {
            return errno_error("rmdir " + path);
        }
        return success();
    }

    Result<void> write_file(const std::string& path, std::string_view value) override {
        // No O_CREAT: configfs attributes exist once their folder does; a missing one is an error.
        UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
        if (!fd) {
            return errno_error("open " + path);
        }
        // configfs takes an attribute's value in one write; a short write is an error, not
        // something to continue (the kernel would parse the rest as a new value).
        ssize_t n;
        do {
            n = ::write(fd.get(), value.data(), value.size());
        } while (n < 0 && errno == EINTR);
        if (n < 0) {
            return errno_error("write " + path);
        }
        if (static_cast<std::size_t>(n) != value.size()) {
            return Error(
                "write " + path, EIO,
                "short write: " + std::to_string(n) + " of " + std::to_string(value.size()));
        }
        return success();
    }

    Result<std::string> read_file(const std::string& path) override {
        return wrenn::read_file(path, 1U << 16);  // configfs and sysfs attributes are small
    }

    Result<void> make_symlink(const std::string& target, const std::string& link) override {
        if (::symlink(target.c_str(), link.c_str()) != 0) {
            return errno_error("symlink " + link + " -> " + target);
        }
        return success();
    }

    Result<void> remove_link(const std::string& path) override {
        if (::unlink(path.c_str()) != 0) {
            return errno_error("unlink " + path);
        }
        return success();
    }

    Result<std::vector<std::string>> list_dir(const std::string& path) override {
        UniqueFd fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        if (!fd) {
            return errno_error("open " + path);
        }
        DIR* dir = ::fdopendir(fd.get());
        if (dir == nullptr) {
            return errno_error("opendir " + path);
        }
        fd.release();  // closedir closes it
        std::vector<std::string> names;
        errno = 0;
        while (const dirent* entry = ::readdir(dir)) {
            std::string_view name = entry->d_name;
            if (name != "." && name != "..") {
                names.emplace_back(name);
            }
        }
        int read_errno = errno;
        ::closedir(dir);
        if (read_errno != 0) {
            return Error("readdir " + path, read_errno);
        }
        std::sort(names.begin(), names.end());
        return names;
    }

    bool exists(const std::string& path) override {
        struct stat st {};
        return ::stat(path.c_str(), &st) == 0;
    }

    std::chrono::steady_clock::time_point now() override {
        return std::chrono::steady_clock::now();
    }

    void sleep_for(std::chrono::milliseconds duration) override {
        std::this_thread::sleep_for(duration);
    }
};

// ---- The sequence, over ConfigfsOps. ---------------------------------------------------------

constexpr std::chrono::milliseconds kDiskPollInterval{50};

std::string under(const std::string& root, const std::string& relative) {
    return root + "/" + relative;
}

// The configfs and sysfs paths of one id.
struct DevicePaths {
    std::string hba, core, control, enable, cmd_time_out, dev_config, nl_reply_supported;
    std::string loopback, target, tpg, lun, link, nexus, address;

    DevicePaths(std::string_view id, const AttachOptions& opts)
        : hba(under(opts.configfs_root, hba_dir())),
          core(under(opts.configfs_root, core_device_dir(id))),
          control(core + "/control"),
          enable(core + "/enable"),
          cmd_time_out(core + "/attrib/cmd_time_out"),
          dev_config(core + "/attrib/dev_config"),
          nl_reply_supported(core + "/attrib/nl_reply_supported"),
          loopback(under(opts.configfs_root, loopback_dir())),
          target(under(opts.configfs_root, loopback_target_dir(id))),
          tpg(target + "/tpgt_1"),
          lun(tpg + "/lun/lun_0"),
          link(lun + "/" + core_device_name(id)),
          nexus(tpg + "/nexus"),
          address(tpg + "/address") {}
};

std::string block_dir_for(const AttachOptions& opts, const std::string& scsi_address) {
    return opts.sys_root + "/class/scsi_device/" + scsi_address + ":0/device/block";
}

// What an attach did, step by step, for the debug log and the overlaybd result file.
class Transcript {
  public:
    void add(std::string line) {
        spdlog::debug("tcmu: {}", line);
        lines_.push_back(std::move(line));
    }
    [[nodiscard]] const std::vector<std::string>& lines() const { return lines_; }

  private:
    std::vector<std::string> lines_;
};

// Everything one attach try created, removed in reverse when the try fails.
class CreatedObjects {
  public:
    enum class Kind { dir, link };
    void push(Kind kind, std::string path) { objects_.emplace_back(kind, std::move(path)); }

    // Removes all, newest first, continuing past failures; returns the first failure.
    Result<void> remove_all(ConfigfsOps& ops, Transcript& log) {
        Result<void> first;
        for (auto it = objects_.rbegin(); it != objects_.rend(); ++it) {
            Result<void> r =
                it->first == Kind::link ? ops.remove_link(it->second) : ops.remove_dir(it->second);
            if (r) {
                log.add("cleanup: removed " + it->second);
            } else {
                log.add("cleanup failed: " + r.error().message());
                spdlog::warn("tcmu: cleanup after a failed attach: {}", r.error().message());
                if (first) {
                    first = r.error();
                }
            }
        }
        objects_.clear();
        return first;
    }

  private:
    std::vector<std::pair<Kind, std::string>> objects_;
};

// mkdir that accepts an existing folder: for folders shared by all devices (the HBA, the
// loopback fabric), which attach creates on first use and never removes.
Result<void> ensure_dir(ConfigfsOps& ops, const std::string& path, Transcript& log) {
    Result<void> r = ops.make_dir(path);
    if (!r && r.error().code() != EEXIST) {
        return r;
    }
    log.add(r ? "mkdir " + path : "exists " + path);
    return success();
}

// Writes 1 to enable. EAGAIN is transient (overlaybd retries it 100 x 50 ms); anything else is not.
Result<void> enable_device(ConfigfsOps& ops, const DevicePaths& paths, const AttachOptions& opts,
                           Transcript& log) {
    for (int retry = 0;; ++retry) {
        Result<void> r = ops.write_file(paths.enable, "1");
        if (r) {
            log.add("write " + paths.enable + ": 1");
            return r;
        }
        if (r.error().code() != EAGAIN || retry >= opts.enable_eagain_retries) {
            return r;
        }
        log.add("enable: " + r.error().message() + ", retry " + std::to_string(retry + 1) + " of " +
                std::to_string(opts.enable_eagain_retries));
        ops.sleep_for(opts.enable_retry_delay);
    }
}

// Polls for /sys/class/scsi_device/<H:C:T>:0/device/block/<sdX> and /dev/<sdX>, up to disk_wait.
// tcm_loop scans the LUN when it is linked, but the disk node may lag behind its sysfs entry.
Result<std::string> wait_for_disk(ConfigfsOps& ops, const std::string& scsi_address,
                                  const AttachOptions& opts, Transcript& log) {
    const std::string block_dir = block_dir_for(opts, scsi_address);
    const auto deadline = ops.now() + opts.disk_wait;
    std::string seen;
    for (;;) {
        auto names = ops.list_dir(block_dir);
        if (names && !names->empty()) {
            seen = names->front();
            std::string dev = opts.dev_root + "/" + seen;
            if (ops.exists(dev)) {
                log.add("disk " + dev + " at " + block_dir);
                return dev;
            }
        }
        if (ops.now() >= deadline) {
            break;
        }
        ops.sleep_for(kDiskPollInterval);
    }
    std::string detail = seen.empty() ? "no block device under " + block_dir
                                      : block_dir + "/" + seen + " exists but " + opts.dev_root +
                                            "/" + seen + " does not";
    detail += " after " + std::to_string(opts.disk_wait.count()) + " ms; is the " +
              "backstore (tcmu-runner/overlaybd-tcmu) running?";
    return Error("wait for the disk at SCSI address " + scsi_address + ":0", ETIMEDOUT, detail);
}

// One try. On failure removes what it created; `retryable` says whether another try may help.
Result<std::string> attach_once(ConfigfsOps& ops, const AttachRequest& req,
                                const AttachOptions& opts, Transcript& log, bool& retryable) {
    const DevicePaths paths(req.id, opts);
    const std::string dev_name = core_device_name(req.id);
    const std::string wwn = wwn_for_id(req.id);
    CreatedObjects created;
    retryable = true;

    auto fail = [&](Error error, std::string_view step) -> Error {
        Error out = std::move(error).within(step);
        log.add("failed: " + out.message());
        Result<void> cleaned = created.remove_all(ops, log);
        if (!cleaned) {
            // A try that leaves objects behind would make the next one fail on them.
            retryable = false;
            return Error(out.action(), out.code(),
                         (out.detail().empty() ? "" : out.detail() + "; ") +
                             "cleanup failed: " + cleaned.error().message());
        }
        return out;
    };

    if (Result<void> r = ensure_dir(ops, paths.hba, log); !r) {
        return fail(std::move(r).error(), "create tcmu hba user_" + std::to_string(kDefaultHba));
    }
    if (Result<void> r = ops.make_dir(paths.core); !r) {
        if (r.error().code() == EEXIST) {
            // Not ours: never remove it, and another try cannot succeed.
            retryable = false;
            return Error("create tcmu device " + dev_name + ": mkdir " + paths.core, EEXIST,
                         "the id is in use; detach it first");
        }
        return fail(std::move(r).error(), "create tcmu device " + dev_name);
    }
    created.push(CreatedObjects::Kind::dir, paths.core);
    log.add("mkdir " + paths.core);

    // These control values are fixed once the device is enabled.
    std::vector<std::string> controls = {
        "dev_config=" + dev_config_for(req.handler, req.config_path),
        "max_data_area_mb=" + std::to_string(req.max_data_area_mb)};
    if (req.size_bytes) {
        controls.push_back("dev_size=" + std::to_string(*req.size_bytes));
    }
    for (const std::string& value : controls) {
        if (Result<void> r = ops.write_file(paths.control, value); !r) {
            return fail(std::move(r).error(), "configure tcmu device " + dev_name);
        }
        log.add("write " + paths.control + ": " + value);
    }
    if (opts.skip_netlink_reply) {
        // See AttachOptions::skip_netlink_reply. Kernels before 4.16 lack the attribute and
        // never wait, so ENOENT is fine.
        Result<void> r = ops.write_file(paths.nl_reply_supported, "-1");
        if (!r && r.error().code() != ENOENT) {
            return fail(std::move(r).error(), "configure tcmu device " + dev_name);
        }
        log.add(r ? "write " + paths.nl_reply_supported + ": -1"
                  : "no " + paths.nl_reply_supported);
    }
    if (Result<void> r = enable_device(ops, paths, opts, log); !r) {
        return fail(std::move(r).error(), "enable tcmu device " + dev_name);
    }
    if (req.cmd_time_out_s > 0) {
        std::string value = std::to_string(req.cmd_time_out_s);
        if (Result<void> r = ops.write_file(paths.cmd_time_out, value); !r) {
            return fail(std::move(r).error(), "set cmd_time_out of tcmu device " + dev_name);
        }
        log.add("write " + paths.cmd_time_out + ": " + value);
    }

    // The loopback fabric's folder appears on first mkdir (it loads tcm_loop if needed).
    if (Result<void> r = ensure_dir(ops, paths.loopback, log); !r) {
        return fail(std::move(r).error(), "create loopback fabric");
    }
    for (const std::string* dir : {&paths.target, &paths.tpg, &paths.lun}) {
        if (Result<void> r = ops.make_dir(*dir); !r) {
            return fail(std::move(r).error(), "create loopback target " + wwn);
        }
        created.push(CreatedObjects::Kind::dir, *dir);
        log.add("mkdir " + *dir);
    }
    if (Result<void> r = ops.write_file(paths.nexus, wwn); !r) {
        return fail(std::move(r).error(), "create nexus of " + wwn);
    }
    log.add("write " + paths.nexus + ": " + wwn);
    // Linking the device into the LUN makes tcm_loop add and scan the SCSI device.
    if (Result<void> r = ops.make_symlink(paths.core, paths.link); !r) {
        return fail(std::move(r).error(), "export " + dev_name + " as lun_0 of " + wwn);
    }
    created.push(CreatedObjects::Kind::link, paths.link);
    log.add("symlink " + paths.link + " -> " + paths.core);

    auto text = ops.read_file(paths.address);
    if (!text) {
        return fail(std::move(text).error(), "read SCSI address of " + wwn);
    }
    auto address = parse_scsi_address(*text);
    if (!address) {
        return fail(std::move(address).error(),
                    "read SCSI address of " + wwn + " from " + paths.address);
    }
    log.add("scsi address " + *address);

    auto disk = wait_for_disk(ops, *address, opts, log);
    if (!disk) {
        return fail(std::move(disk).error(), "attach " + dev_name + " as a disk");
    }
    return disk;
}

// overlaybd's snapshotter shows the result file when a device fails to come up; our part of the
// story goes there too. Best effort: failing to write it is logged, never an attach failure.
void append_result_file(const AttachRequest& req, const Transcript& log) {
    if (req.handler != "overlaybd") {
        return;  // only overlaybd configs name a result file
    }
    auto file = result_file_for_config(req.config_path);
    if (!file) {
        spdlog::debug("tcmu: no result file for {}: {}", req.config_path, file.error().message());
        return;
    }
    UniqueFd fd(::open(file->c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644));
    if (!fd) {
        spdlog::warn("tcmu: cannot write attach log to {}: {}", *file,
                     errno_error("open").message());
        return;
    }
    std::string text;
    for (const std::string& line : log.lines()) {
        text += "wrenn tcmu attach " + req.id + ": " + line + "\n";
    }
    std::size_t done = 0;
    while (done < text.size()) {
        ssize_t n = ::write(fd.get(), text.data() + done, text.size() - done);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            spdlog::warn("tcmu: cannot write attach log to {}: {}", *file,
                         errno_error("write").message());
            return;
        }
        done += static_cast<std::size_t>(n);
    }
}

// The "sdX" of an id's LUN from sysfs, if its target has an address and the disk is there.
std::optional<std::string> disk_name(ConfigfsOps& ops, const DevicePaths& paths,
                                     const AttachOptions& opts) {
    auto text = ops.read_file(paths.address);
    if (!text) {
        return std::nullopt;
    }
    auto address = parse_scsi_address(*text);
    if (!address) {
        return std::nullopt;  // no nexus
    }
    auto names = ops.list_dir(block_dir_for(opts, *address));
    if (!names || names->empty()) {
        return std::nullopt;
    }
    return names->front();
}

Result<void> validate(const AttachRequest& req) {
    const std::string action = "attach tcmu device " + req.id;
    if (!is_valid_id(req.id)) {
        return Error(action, EINVAL, "the id must be 1 to 13 decimal digits");
    }
    if (req.handler.empty() || req.handler.find('/') != std::string::npos) {
        return Error(action, EINVAL, "bad handler name \"" + req.handler + "\"");
    }
    if (req.config_path.empty()) {
        return Error(action, EINVAL, "no config path");
    }
    if (req.max_data_area_mb == 0) {
        return Error(action, EINVAL, "max_data_area_mb must be positive");
    }
    return success();
}

Error invalid_id(std::string_view action, std::string_view id) {
    return Error(std::string(action) + " " + std::string(id), EINVAL,
                 "the id must be 1 to 13 decimal digits");
}

}  // namespace

ConfigfsOps& real_configfs_ops() {
    static RealConfigfsOps ops;
    return ops;
}

Result<std::string> attach(const AttachRequest& req, const AttachOptions& opts) {
    return attach(real_configfs_ops(), req, opts);
}

Result<std::string> attach(ConfigfsOps& ops, const AttachRequest& req, const AttachOptions& opts) {
    if (Result<void> r = validate(req); !r) {
        return std::move(r).error();
    }
    Transcript log;
    log.add("attach " + req.handler + "/" + req.config_path + " as id " + req.id);
    const int attempts = std::max(1, opts.attempts);
    std::optional<Error> last;
    for (int attempt = 1; attempt <= attempts; ++attempt) {
        bool retryable = true;
        auto disk = attach_once(ops, req, opts, log, retryable);
        if (disk) {
            spdlog::info("tcmu: attached {} ({}/{}) as {}", req.id, req.handler, req.config_path,
                         *disk);
            append_result_file(req, log);
            return disk;
        }
        last = std::move(disk).error();
        if (!retryable || attempt == attempts) {
            last = std::move(*last).within("attach tcmu device " + req.id + " (try " +
                                           std::to_string(attempt) + " of " +
                                           std::to_string(attempts) + ")");
            break;
        }
        spdlog::warn("tcmu: attach {} try {} of {} failed, retrying in {} ms: {}", req.id, attempt,
                     attempts, opts.retry_delay.count(), last->message());
        log.add("try " + std::to_string(attempt) + " failed; retrying");
        ops.sleep_for(opts.retry_delay);
    }
    spdlog::error("tcmu: {}", last->message());
    append_result_file(req, log);
    return std::move(*last);
}

Result<void> detach(std::string_view id, const AttachOptions& opts) {
    return detach(real_configfs_ops(), id, opts);
}

Result<void> detach(ConfigfsOps& ops, std::string_view id, const AttachOptions& opts) {
    if (!is_valid_id(id)) {
        return invalid_id("detach tcmu device", id);
    }
    const DevicePaths paths(id, opts);
    const std::string action = "detach tcmu device " + std::string(id);
    // Removing the LUN under a device-mapper table would fail its I/O (and invalidate a
    // persistent snapshot's CoW), so refuse while the disk has holders in sysfs.
    if (auto disk = disk_name(ops, paths, opts)) {
        auto holders = ops.list_dir(opts.sys_root + "/class/block/" + *disk + "/holders");
        if (holders && !holders->empty()) {
            std::string names;
            for (const std::string& h : *holders) {
                names += (names.empty() ? "" : ", ") + h;
            }
            return Error(action, EBUSY, opts.dev_root + "/" + *disk + " is held by " + names);
        }
    }
    // The reverse of attach; ENOENT means that part is already gone (or was never made).
    struct Step {
        bool link;
        const std::string& path;
    };
    const Step steps[] = {{true, paths.link},
                          {false, paths.lun},
                          {false, paths.tpg},
                          {false, paths.target},
                          {false, paths.core}};
    for (const Step& step : steps) {
        Result<void> r = step.link ? ops.remove_link(step.path) : ops.remove_dir(step.path);
        if (!r && r.error().code() != ENOENT) {
            return std::move(r).error().within(action);
        }
        spdlog::debug("tcmu: {}: {} {}", action, r ? "removed" : "already gone:", step.path);
    }
    spdlog::info("tcmu: detached {}", id);
    return success();
}

Result<std::optional<std::string>> find_attached(std::string_view id, const AttachOptions& opts) {
    return find_attached(real_configfs_ops(), id, opts);
}

Result<std::optional<std::string>> find_attached(ConfigfsOps& ops, std::string_view id,
                                                 const AttachOptions& opts) {
    if (!is_valid_id(id)) {
        return invalid_id("find tcmu device", id);
    }
    const DevicePaths paths(id, opts);
    const std::optional<std::string> none;
    if (!ops.exists(paths.core) || !ops.exists(paths.link)) {
        return none;
    }
    auto disk = disk_name(ops, paths, opts);
    if (!disk) {
        return none;
    }
    std::string dev = opts.dev_root + "/" + *disk;
    if (!ops.exists(dev)) {
        return none;
    }
    return std::optional<std::string>(dev);
}

Result<std::vector<std::string>> list_attached(const AttachOptions& opts) {
    return list_attached(real_configfs_ops(), opts);
}

Result<std::vector<std::string>> list_attached(ConfigfsOps& ops, const AttachOptions& opts) {
    auto names = ops.list_dir(under(opts.configfs_root, hba_dir()));
    if (!names) {
        if (names.error().code() == ENOENT) {
            return std::vector<std::string>{};  // no device was ever made
        }
        return std::move(names).error().within("list tcmu devices");
    }
    std::vector<std::string> ids;
    for (const std::string& name : *names) {
        if (name.rfind("dev_", 0) == 0 && is_valid_id(std::string_view(name).substr(4))) {
            ids.push_back(name.substr(4));
        }
    }
    std::sort(ids.begin(), ids.end());
    return ids;
}

Result<std::string> attached_config(std::string_view id, const AttachOptions& opts) {
    return attached_config(real_configfs_ops(), id, opts);
}

Result<std::string> attached_config(ConfigfsOps& ops, std::string_view id,
                                    const AttachOptions& opts) {
    const std::string action = "read config of tcmu device " + std::string(id);
    if (!is_valid_id(id)) {
        return invalid_id("read config of tcmu device", id);
    }
    const DevicePaths paths(id, opts);
    auto text = ops.read_file(paths.dev_config);
    if (!text) {
        return std::move(text).error().within(action);
    }
    auto config = config_from_dev_config(*text);
    if (!config) {
        return std::move(config).error().within(action);
    }
    return config;
}

}  // namespace wrenn::tcmu
