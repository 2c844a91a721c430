#include "tcmu/configfs.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <iterator>
#include <span>
#include <thread>

#include "common/file.hpp"
#include "common/unique_fd.hpp"
#include "tcmu/naming.hpp"

namespace wrenn::tcmu {

namespace {

// An attribute's value without the newline (and NULs, spaces) the kernel ends it with.
std::string trim_attribute(std::string_view text);

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

    Result<void> open_exclusive(const std::string& device) override {
        // O_EXCL on a block device (without O_CREAT) claims it exclusively: the open fails with
        // EBUSY while it is mounted or claimed by another exclusive opener (blkdev_get_by_dev).
        UniqueFd fd(::open(device.c_str(), O_RDONLY | O_EXCL | O_CLOEXEC | O_NONBLOCK));
        if (!fd) {
            return errno_error("open " + device + " exclusively");
        }
        return success();
    }

    Result<void> open_shared(const std::string& device) override {
        UniqueFd fd(::open(device.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
        if (!fd) {
            return errno_error("open " + device);
        }
        return success();
    }

    Result<std::optional<Opener>> char_device_opener(unsigned major, unsigned minor) override {
        const dev_t want = makedev(major, minor);
        UniqueFd proc(::open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        if (!proc) {
            return errno_error("open /proc");
        }
        DIR* pids = ::fdopendir(::dup(proc.get()));
        if (pids == nullptr) {
            return errno_error("list /proc");
        }
        std::optional<Opener> found;
        while (!found) {
            const dirent* entry = ::readdir(pids);
            if (entry == nullptr) {
                break;
            }
            const std::string_view name = entry->d_name;
            if (name.empty() || name.find_first_not_of("0123456789") != std::string_view::npos) {
                continue;
            }
            // A process that exits meanwhile (ENOENT) or that we may not look into is skipped.
            UniqueFd fd_dir(::openat(proc.get(), (std::string(name) + "/fd").c_str(),
                                     O_RDONLY | O_DIRECTORY | O_CLOEXEC));
            if (!fd_dir) {
                continue;
            }
            DIR* fds = ::fdopendir(fd_dir.get());
            if (fds == nullptr) {
                continue;
            }
            fd_dir.release();  // closedir closes it
            while (const dirent* fd_entry = ::readdir(fds)) {
                // stat (not lstat) of /proc/<pid>/fd/<n> is the open file itself: for a device
                // node, its st_rdev, whichever path or mount namespace the process opened it by.
                struct stat st {};
                if (fd_entry->d_name[0] != '.' &&
                    ::fstatat(::dirfd(fds), fd_entry->d_name, &st, 0) == 0 && S_ISCHR(st.st_mode) &&
                    st.st_rdev == want) {
                    Opener opener;
                    std::from_chars(name.data(), name.data() + name.size(), opener.pid);
                    if (auto comm = wrenn::read_file("/proc/" + std::string(name) + "/comm", 64);
                        comm) {
                        opener.command = trim_attribute(*comm);
                    }
                    found = std::move(opener);
                    break;
                }
            }
            ::closedir(fds);
        }
        ::closedir(pids);
        return found;
    }

    std::chrono::steady_clock::time_point now() override {
        return std::chrono::steady_clock::now();
    }

    void sleep_for(std::chrono::milliseconds duration) override {
        std::this_thread::sleep_for(duration);
    }
};

// ---- Files beneath an allowed folder, never through a symlink. ------------------------------

// An open_beneath failure as the API should see it: a symlink or an escape is a refusal.
Error beneath_error(const std::string& action, int code) {
    switch (code) {
        case ELOOP:
        case EXDEV:
            return Error(action, EACCES,
                         "a symlink on the way or at the end (TCMU configs and their logs are "
                         "opened without following symlinks)");
        case ENOTDIR:
            return Error(action, EACCES,
                         "a component on the way is a symlink or not a folder (symlinks are not "
                         "followed)");
        default:
            return Error(action, code);
    }
}

std::string octal_mode(mode_t mode) {
    char text[8];
    std::snprintf(text, sizeof text, "%04o", static_cast<unsigned>(mode & 07777));
    return text;
}

// ---- The sequence, over ConfigfsOps. ---------------------------------------------------------

constexpr std::chrono::milliseconds kDiskPollInterval{50};

std::string under(const std::string& root, const std::string& relative) {
    return root + "/" + relative;
}

// The configfs and sysfs paths of one id.
struct DevicePaths {
    std::string hba, core, control, enable, cmd_time_out, dev_config, dev_size, serial,
        nl_reply_supported;
    std::string loopback, target, tpg, lun, link, nexus, address;

    DevicePaths(std::string_view id, const AttachOptions& opts)
        : hba(under(opts.configfs_root, hba_dir())),
          core(under(opts.configfs_root, core_device_dir(id))),
          control(core + "/control"),
          enable(core + "/enable"),
          cmd_time_out(core + "/attrib/cmd_time_out"),
          dev_config(core + "/attrib/dev_config"),
          dev_size(core + "/attrib/dev_size"),
          serial(core + "/wwn/vpd_unit_serial"),
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
            // The node appears before the disk can be opened (ENXIO until bdev_add, checked in
            // the VM: a caller that opened /dev/sdX at once failed): wait until it opens.
            if (ops.exists(dev)) {
                if (Result<void> opened = ops.open_shared(dev); opened) {
                    log.add("disk " + dev + " at " + block_dir);
                    return dev;
                } else if (opened.error().code() != ENXIO && opened.error().code() != ENOENT) {
                    return std::move(opened).error();
                }
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

std::string millis(std::chrono::milliseconds d) {
    return std::to_string(d.count()) + " ms";
}

// A TCMU device's UIO node: tcmu_configure_device registers it during the enable write, named
// "tcm-user/<hba>/<device>/<dev_config>" (tcmu_update_uio_info). Returns its "uioN" and the
// major:minor from /sys/class/uio/uioN/dev.
struct UioNode {
    std::string name;
    unsigned major = 0;
    unsigned minor = 0;
};

Result<UioNode> find_uio_node(ConfigfsOps& ops, const std::string& dev_name,
                              const AttachOptions& opts) {
    const std::string uio_class = opts.sys_root + "/class/uio";
    const std::string want = "tcm-user/" + std::to_string(kDefaultHba) + "/" + dev_name;
    auto names = ops.list_dir(uio_class);
    if (!names && names.error().code() != ENOENT) {
        return std::move(names).error();
    }
    for (const std::string& uio : names ? *names : std::vector<std::string>{}) {
        auto text = ops.read_file(uio_class + "/" + uio + "/name");
        if (!text) {
            if (text.error().code() == ENOENT) {
                continue;  // another device, removed meanwhile
            }
            return std::move(text).error();
        }
        const std::string name = trim_attribute(*text);
        if (name != want && name.rfind(want + "/", 0) != 0) {
            continue;
        }
        const std::string dev_path = uio_class + "/" + uio + "/dev";
        auto dev = ops.read_file(dev_path);
        if (!dev) {
            return std::move(dev).error();
        }
        UioNode node{uio};
        if (std::sscanf(trim_attribute(*dev).c_str(), "%u:%u", &node.major, &node.minor) != 2) {
            return Error("read " + dev_path, EINVAL,
                         "\"" + escape_for_log(*dev) + "\" is not major:minor");
        }
        return node;
    }
    return Error("find the UIO device of " + dev_name, ENOENT,
                 "no " + uio_class + "/*/name reads " + want + " after enable");
}

// Waits (opts.handler_wait) until a userspace handler holds the device's UIO node open, and still
// holds it opts.handler_settle later. The handler (tcmu-runner, overlaybd-tcmu) opens the node
// when the kernel announces the device, or in its startup scan; tcmu_open lets only one opener
// in, so we look at /proc instead of opening it. ETIMEDOUT, naming the handler and the
// backstore to start, when none took it.
Result<void> wait_for_handler(ConfigfsOps& ops, const AttachRequest& req,
                              const std::string& dev_name, const AttachOptions& opts,
                              Transcript& log) {
    const std::string action = "wait for a userspace handler to take " + dev_name;
    auto node = find_uio_node(ops, dev_name, opts);
    if (!node) {
        return std::move(node).error().within(action);
    }
    const std::string shown = opts.dev_root + "/" + node->name;
    log.add("uio node " + shown + " (" + std::to_string(node->major) + ":" +
            std::to_string(node->minor) + ")");
    const auto deadline = ops.now() + opts.handler_wait;
    std::optional<std::chrono::steady_clock::time_point> held_since;
    std::optional<ConfigfsOps::Opener> holder;
    const auto describe = [](const ConfigfsOps::Opener& o) {
        return "pid " + std::to_string(o.pid) +
               (o.command.empty() ? std::string() : " (" + escape_for_log(o.command) + ")");
    };
    for (;;) {
        auto opener = ops.char_device_opener(node->major, node->minor);
        if (!opener) {
            return std::move(opener).error().within(action + ": look for the process holding " +
                                                    shown);
        }
        const auto now = ops.now();
        if (*opener) {
            if (!held_since) {
                held_since = now;
                holder = **opener;
                log.add(shown + " opened by " + describe(**opener));
            }
            if (now - *held_since >= opts.handler_settle) {
                log.add("the handler took " + dev_name + ": " + describe(**opener));
                return success();
            }
        } else if (held_since) {
            // It let go again: its handler failed to open the config (tcmu-runner logs why).
            log.add(describe(*holder) + " closed " + shown + " again");
            held_since.reset();
        }
        if (now >= deadline + (held_since ? opts.handler_settle : std::chrono::milliseconds(0))) {
            break;
        }
        ops.sleep_for(opts.handler_poll);
    }
    const std::string_view backstore = backstore_for_handler(req.handler);
    const std::string handler = escape_for_log(req.handler);
    std::string detail =
        holder
            ? describe(*holder) + " opened " + shown + " but closed it again: its " + handler +
                  " handler could not open the config; see " + std::string(backstore) + "'s log"
            : "no process opened " + shown + " within " + millis(opts.handler_wait) + ": no " +
                  handler + " handler serves TCMU devices here; start " + std::string(backstore) +
                  ", the backstore of the " + handler + " handler, and attach again";
    return Error(action, ETIMEDOUT, detail);
}

// Removes, in this order and each only if it is there, the LUN link, lun_0, tpgt_1, the loopback
// target and (with_core) the core device: detach's steps, and the loopback half of them for an
// attach that takes over a device it finds enabled.
Result<void> remove_parts(ConfigfsOps& ops, const DevicePaths& paths, bool with_core,
                          const std::string& action) {
    struct Step {
        bool link;
        const std::string& path;
    };
    const Step steps[] = {{true, paths.link},
                          {false, paths.lun},
                          {false, paths.tpg},
                          {false, paths.target},
                          {false, paths.core}};
    const std::size_t count = with_core ? std::size(steps) : std::size(steps) - 1;
    for (const Step& step : std::span(steps, count)) {
        Result<void> r = step.link ? ops.remove_link(step.path) : ops.remove_dir(step.path);
        // ENOENT: that part is already gone (or was never made).
        if (!r && r.error().code() != ENOENT) {
            return std::move(r).error().within(action);
        }
        spdlog::debug("tcmu: {}: {} {}", action, r ? "removed" : "already gone:", step.path);
    }
    return success();
}

// The core device's serial, control values and enable, in attach's order; the error says which
// step failed.
Result<void> configure_core(ConfigfsOps& ops, const AttachRequest& req, const DevicePaths& paths,
                            const std::string& dev_name, const AttachOptions& opts,
                            Transcript& log) {
    if (!req.serial.empty()) {
        // First, so that a device of ours says so from the start; the kernel takes it only
        // before the device is exported (target_wwn_vpd_unit_serial_store: EINVAL after).
        if (Result<void> r = ops.write_file(paths.serial, req.serial); !r) {
            return std::move(r).error().within("mark tcmu device " + dev_name);
        }
        log.add("write " + paths.serial + ": " + req.serial);
    }

    // These control values are fixed once the device is enabled.
    std::vector<std::string> controls = {
        "dev_config=" + dev_config_for(req.handler, req.config_path),
        "max_data_area_mb=" + std::to_string(req.max_data_area_mb)};
    if (req.size_bytes) {
        controls.push_back("dev_size=" + std::to_string(*req.size_bytes));
    }
    for (const std::string& value : controls) {
        if (Result<void> r = ops.write_file(paths.control, value); !r) {
            return std::move(r).error().within("configure tcmu device " + dev_name);
        }
        log.add("write " + paths.control + ": " + value);
    }
    if (opts.skip_netlink_reply) {
        // See AttachOptions::skip_netlink_reply. Kernels before 4.16 lack the attribute and
        // never wait, so ENOENT is fine.
        Result<void> r = ops.write_file(paths.nl_reply_supported, "-1");
        if (!r && r.error().code() != ENOENT) {
            return std::move(r).error().within("configure tcmu device " + dev_name);
        }
        log.add(r ? "write " + paths.nl_reply_supported + ": -1"
                  : "no " + paths.nl_reply_supported);
    }
    if (Result<void> r = enable_device(ops, paths, opts, log); !r) {
        return std::move(r).error().within("enable tcmu device " + dev_name);
    }
    return success();
}

// One try. On failure removes what it created; `retryable` says whether another try may help.
Result<std::string> attach_once(ConfigfsOps& ops, const AttachRequest& req,
                                const AttachOptions& opts, Transcript& log, bool& retryable) {
    const DevicePaths paths(req.id, opts);
    const std::string dev_name = core_device_name(req.id);
    const std::string wwn = wwn_for_id(req.id);
    CreatedObjects created;
    retryable = true;

    // Undoes the try and returns its error, which already says what failed.
    auto fail_with = [&](Error out) -> Error {
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
    auto fail = [&](Error error, std::string_view step) -> Error {
        return fail_with(std::move(error).within(step));
    };

    if (Result<void> r = ensure_dir(ops, paths.hba, log); !r) {
        return fail(std::move(r).error(), "create tcmu hba user_" + std::to_string(kDefaultHba));
    }
    Result<void> made = ops.make_dir(paths.core);
    bool taken_over = false;  // an enabled half-made device of this request, continued
    if (!made && made.error().code() == EEXIST) {
        // Another try cannot succeed while the id is taken: a refusal here is final.
        retryable = false;
        const std::string action = "create tcmu device " + dev_name + ": mkdir " + paths.core;
        auto found = inspect_existing(ops, req.id, opts);
        if (!found) {
            return Error(action, EEXIST,
                         "the id is in use, and reading it failed: " + found.error().message());
        }
        const ExistingVerdict verdict = judge_existing(*found, req);
        if (verdict.kind == ExistingVerdict::Kind::Foreign) {
            return Error(action, EEXIST, "the id is in use: " + verdict.why);  // never touched
        }
        if (verdict.kind == ExistingVerdict::Kind::Complete) {
            return Error(action, EEXIST,
                         "the id is in use by a device for this same origin; detach it first");
        }
        if (found->enabled && !found->exported) {
            // Enabled, so the kernel has announced it to the handler, which may still be acting
            // on that announcement. Removed and made again at once, the device comes back under
            // the same name and UIO minor while the handler is still busy with the old one
            // (seen in the VM with tcmu-runner: it then served neither, and the redo timed out
            // waiting for it). Its values are this request's: take it over where it stopped.
            const std::string line = dev_name +
                                     " exists enabled but not exported, left by an "
                                     "attach that did not finish; taking it over "
                                     "from there";
            spdlog::warn("tcmu: {}", line);
            log.add(line);
            // What the killed attach made of its loopback target (never linked) goes.
            if (Result<void> r =
                    remove_parts(ops, paths, false, "remove the loopback target of " + dev_name);
                !r) {
                return std::move(r).error().within("take over half-made tcmu device " + dev_name);
            }
            retryable = true;  // from here on, an ordinary try...
            created.push(CreatedObjects::Kind::dir, paths.core);  // ...which undoes it on failure
            taken_over = true;
        } else {
            // Not enabled (no handler has heard of it), or exported without its disk (the
            // handler took it long ago): undo and redo.
            const std::string line = dev_name + " exists half-made (" + verdict.why +
                                     "), left by an attach that did not finish; removing it and "
                                     "attaching again";
            spdlog::warn("tcmu: {}", line);
            log.add(line);
            if (Result<void> undone = detach(ops, req.id, opts); !undone) {
                return std::move(undone).error().within("remove half-made tcmu device " + dev_name);
            }
            retryable = true;  // from here on, an ordinary try
            made = ops.make_dir(paths.core);
        }
    }
    if (!taken_over) {
        if (!made) {
            return fail(std::move(made).error(), "create tcmu device " + dev_name);
        }
        created.push(CreatedObjects::Kind::dir, paths.core);
        log.add("mkdir " + paths.core);
        if (Result<void> r = configure_core(ops, req, paths, dev_name, opts, log); !r) {
            return fail_with(std::move(r).error());
        }
    }
    if (req.cmd_time_out_s > 0) {
        std::string value = std::to_string(req.cmd_time_out_s);
        if (Result<void> r = ops.write_file(paths.cmd_time_out, value); !r) {
            return fail(std::move(r).error(), "set cmd_time_out of tcmu device " + dev_name);
        }
        log.add("write " + paths.cmd_time_out + ": " + value);
    }

    // Before the LUN exists, so that no SCSI scan can wait on a device nobody serves.
    if (Result<void> r = wait_for_handler(ops, req, dev_name, opts, log); !r) {
        if (r.error().code() == ETIMEDOUT) {
            // The backstore will not start by itself. But a taken-over device may be one its
            // handler gave up on: the cleanup removes it, and one fresh try tells the handler anew.
            retryable = taken_over;
        }
        return fail_with(std::move(r).error());
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

// The attach log as lines for the result file; every value echoed in it is escaped, so a
// config path or an error text cannot end a line or forge one.
std::string log_text(const AttachRequest& req, const Transcript& log) {
    std::string text;
    for (const std::string& line : log.lines()) {
        text += "wrenn tcmu attach " + req.id + ": " + escape_for_log(line) + "\n";
    }
    return text;
}

void write_all(int fd, const std::string& file, const std::string& text) {
    std::size_t done = 0;
    while (done < text.size()) {
        ssize_t n = ::write(fd, text.data() + done, text.size() - done);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            spdlog::warn("tcmu: cannot write attach log to {}: {}", escape_for_log(file),
                         errno_error("write").message());
            return;
        }
        done += static_cast<std::size_t>(n);
    }
}

// For an API attach: the log goes to contained_result_file beneath the config's own folder,
// opened through the config's folder fd without following symlinks, created 0600, and only if
// it is a regular file with one link (a hard link could point anywhere). Otherwise nothing is
// written. Best effort: a failure is logged, never an attach failure.
void append_contained_result_file(const OriginPolicy& policy, const AttachRequest& req,
                                  const Transcript& log) {
    auto config = open_allowed_config(policy, req.config_path);
    if (!config) {
        spdlog::warn("tcmu: no attach log for {}: {}", escape_for_log(req.config_path),
                     config.error().message());
        return;
    }
    std::optional<std::string> field;
    if (auto text = read_file(config->file.get(), req.config_path, 1U << 20); text) {
        if (auto parsed = result_file_field(*text); parsed) {
            field = std::move(parsed).value();
        }
    }
    const std::string name = contained_result_file(field);
    const std::string shown = req.config_path.substr(0, req.config_path.rfind('/') + 1) + name;
    UniqueFd fd(open_beneath(config->dir.get(), name,
                             O_WRONLY | O_APPEND | O_CREAT | O_NONBLOCK | O_NOCTTY, 0600));
    if (!fd) {
        spdlog::warn("tcmu: no attach log: {}",
                     beneath_error("open " + escape_for_log(shown), errno).message());
        return;
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1) {
        spdlog::warn("tcmu: no attach log: {} is not a regular file with a single link",
                     escape_for_log(shown));
        return;
    }
    write_all(fd.get(), shown, log_text(req, log));
}

// overlaybd's snapshotter shows the result file when a device fails to come up; our part of the
// story goes there too. For the operator's CLI this is overlaybd-attacher's rule
// (result_file_for_config: absolute paths and symlinks allowed, as its caller is root); an API
// attach goes through append_contained_result_file. Best effort: failing to write it is logged,
// never an attach failure.
void append_result_file(const AttachRequest& req, const Transcript& log) {
    if (req.handler != "overlaybd") {
        return;  // only overlaybd configs name a result file
    }
    if (req.api_policy) {
        append_contained_result_file(*req.api_policy, req, log);
        return;
    }
    auto file = result_file_for_config(req.config_path);
    if (!file) {
        spdlog::debug("tcmu: no result file for {}: {}", escape_for_log(req.config_path),
                      file.error().message());
        return;
    }
    UniqueFd fd(::open(file->c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644));
    if (!fd) {
        spdlog::warn("tcmu: cannot write attach log to {}: {}", escape_for_log(*file),
                     errno_error("open").message());
        return;
    }
    write_all(fd.get(), *file, log_text(req, log));
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
    // Every caller, the operator's CLI too: a ',' or newline in dev_config would add configfs
    // options, and a value over the kernel's limit would be cut.
    if (Result<void> r = check_dev_config(req.handler, req.config_path); !r) {
        return std::move(r).error().within(action);
    }
    if (req.max_data_area_mb == 0) {
        return Error(action, EINVAL, "max_data_area_mb must be positive");
    }
    if (!req.serial.empty() && !is_valid_serial(req.serial)) {
        return Error(action, EINVAL, "the serial must be 1 to 253 characters from [A-Za-z0-9._-]");
    }
    return success();
}

std::string trim_attribute(std::string_view text) {
    while (!text.empty() && (text.back() == '\n' || text.back() == '\0' || text.back() == ' ')) {
        text.remove_suffix(1);
    }
    return std::string(text);
}

Error invalid_id(std::string_view action, std::string_view id) {
    return Error(std::string(action) + " " + std::string(id), EINVAL,
                 "the id must be 1 to 13 decimal digits");
}

}  // namespace

// openat2(dirfd, relative, how) with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS (Linux 5.6+): the
// kernel refuses ("..", absolute paths and symlinks, magic links included) anything that would
// leave dirfd or pass through a symlink. Where openat2 is missing (ENOSYS), the same is walked
// by hand: each folder opened O_PATH | O_DIRECTORY | O_NOFOLLOW from the one before (a symlink
// there gives ENOTDIR), the last component with O_NOFOLLOW (ELOOP on a symlink). `relative`
// has no "..", "." or empty component (the callers check with origin_policy's rules).
int open_beneath(int dirfd, const std::string& relative, int flags, mode_t mode,
                 Resolver resolver) {
    open_how how{};
    how.flags = static_cast<std::uint64_t>(flags | O_CLOEXEC | O_NOFOLLOW);
    how.mode = (flags & O_CREAT) != 0 ? mode : 0;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    if (resolver == Resolver::openat2) {
        long fd;
        do {
            // EAGAIN: a rename raced the lookup (RESOLVE_BENEATH asks for a retry then).
            fd = ::syscall(SYS_openat2, dirfd, relative.c_str(), &how, sizeof how);
        } while (fd < 0 && (errno == EINTR || errno == EAGAIN));
        if (fd >= 0 || errno != ENOSYS) {
            return static_cast<int>(fd);
        }
    }
    UniqueFd current;
    int at = dirfd;
    std::size_t pos = 0;
    for (;;) {
        const auto slash = relative.find('/', pos);
        const std::string part =
            relative.substr(pos, slash == std::string::npos ? slash : slash - pos);
        if (part.empty() || part == "." || part == "..") {
            errno = EXDEV;
            return -1;
        }
        if (slash == std::string::npos) {
            return ::openat(at, part.c_str(), flags | O_CLOEXEC | O_NOFOLLOW, mode);
        }
        UniqueFd next(::openat(at, part.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!next) {
            return -1;
        }
        current = std::move(next);
        at = current.get();
        pos = slash + 1;
    }
}

DeviceIdentity identity_of(const AttachRequest& req) {
    return DeviceIdentity{req.handler, req.config_path, req.size_bytes};
}

Result<void> check_attached(std::string_view id, const DeviceIdentity& expected,
                            const AttachOptions& opts) {
    return check_attached(real_configfs_ops(), id, expected, opts);
}

Result<void> check_attached(ConfigfsOps& ops, std::string_view id, const DeviceIdentity& expected,
                            const AttachOptions& opts) {
    const std::string action = "check tcmu device " + std::string(id);
    if (!is_valid_id(id)) {
        return invalid_id("check tcmu device", id);
    }
    const DevicePaths paths(id, opts);
    auto text = ops.read_file(paths.dev_config);
    if (!text) {
        return std::move(text).error().within(action);
    }
    const std::string want = dev_config_for(expected.handler, expected.config_path);
    const std::string have = trim_attribute(*text);
    if (have != want) {
        return Error(action, EEXIST,
                     "its dev_config is \"" + escape_for_log(have) + "\" but this origin's is \"" +
                         escape_for_log(want) +
                         "\"; the id belongs to another device, which is left alone");
    }
    if (expected.size_bytes) {
        auto size = ops.read_file(paths.core + "/attrib/dev_size");
        if (!size) {
            return std::move(size).error().within(action);
        }
        const std::string have_size = trim_attribute(*size);
        if (have_size != std::to_string(*expected.size_bytes)) {
            return Error(action, EEXIST,
                         "its dev_size is " + escape_for_log(have_size) + " but this origin's is " +
                             std::to_string(*expected.size_bytes) +
                             "; the id belongs to another device, which is left alone");
        }
    }
    return success();
}

ExistingVerdict judge_existing(const ExistingDevice& found, const AttachRequest& req) {
    using Kind = ExistingVerdict::Kind;
    const std::string want_config = dev_config_for(req.handler, req.config_path);
    if (!found.dev_config.empty() && found.dev_config != want_config) {
        return {Kind::Foreign, "its dev_config is \"" + escape_for_log(found.dev_config) +
                                   "\" but this origin's is \"" + escape_for_log(want_config) +
                                   "\"; the id belongs to another device, which is left alone"};
    }
    const std::uint64_t want_size = req.size_bytes.value_or(0);
    const auto size_text = [](std::uint64_t size) {
        return size == 0 ? std::string("none") : std::to_string(size);
    };
    // An enabled device was configured for good (dev_size is fixed by enable), so what it lacks
    // it will never have: another's.
    if ((found.dev_size != 0 || found.enabled) && found.dev_size != want_size) {
        return {Kind::Foreign, "its dev_size is " + size_text(found.dev_size) +
                                   " but this origin's is " + size_text(want_size) +
                                   "; the id belongs to another device, which is left alone"};
    }
    if (found.enabled && found.dev_config.empty()) {
        return {Kind::Foreign, "it is enabled without a dev_config; not a device wrenn made"};
    }
    if (!found.serial.empty() && found.serial != req.serial) {
        return {Kind::Foreign,
                "its serial is \"" + escape_for_log(found.serial) + "\" but this attach's is " +
                    (req.serial.empty() ? std::string("none")
                                        : "\"" + escape_for_log(req.serial) + "\"") +
                    " (another state dir's or another tool's device), which is left alone"};
    }
    if (found.enabled && found.exported && found.disk) {
        return {Kind::Complete, "enabled, exported, with its disk"};
    }
    return {Kind::HalfMade, !found.enabled    ? "not enabled"
                            : !found.exported ? "enabled but not exported"
                                              : "exported but without its disk"};
}

Result<ExistingDevice> inspect_existing(ConfigfsOps& ops, std::string_view id,
                                        const AttachOptions& opts) {
    const std::string action = "inspect tcmu device " + std::string(id);
    if (!is_valid_id(id)) {
        return invalid_id("inspect tcmu device", id);
    }
    const DevicePaths paths(id, opts);
    ExistingDevice out;
    auto config = ops.read_file(paths.dev_config);
    if (!config) {
        return std::move(config).error().within(action);
    }
    out.dev_config = trim_attribute(*config);
    auto size = ops.read_file(paths.dev_size);
    if (!size) {
        return std::move(size).error().within(action);
    }
    const std::string size_text = trim_attribute(*size);
    const auto parsed =
        std::from_chars(size_text.data(), size_text.data() + size_text.size(), out.dev_size);
    if (parsed.ec != std::errc() || parsed.ptr != size_text.data() + size_text.size()) {
        return Error(action, EINVAL,
                     paths.dev_size + " reads \"" + escape_for_log(size_text) + "\"");
    }
    auto serial = attached_serial(ops, id, opts);
    if (!serial) {
        return std::move(serial).error().within(action);
    }
    out.serial = std::move(serial).value();
    auto enable = ops.read_file(paths.enable);
    if (!enable) {
        return std::move(enable).error().within(action);
    }
    out.enabled = trim_attribute(*enable) == "1";
    out.exported = ops.exists(paths.link);
    if (out.exported) {
        auto disk = disk_name(ops, paths, opts);
        out.disk = disk && ops.exists(opts.dev_root + "/" + *disk);
    }
    return out;
}

Result<std::string> attached_serial(ConfigfsOps& ops, std::string_view id,
                                    const AttachOptions& opts) {
    if (!is_valid_id(id)) {
        return invalid_id("read serial of tcmu device", id);
    }
    auto text = ops.read_file(DevicePaths(id, opts).serial);
    if (!text) {
        return std::move(text).error().within("read serial of tcmu device " + std::string(id));
    }
    return parse_unit_serial(*text);
}

Result<UnusedDetached> detach_unused(std::string_view tag, const std::vector<std::string>& in_use,
                                     const AttachOptions& opts) {
    return detach_unused(real_configfs_ops(), tag, in_use, opts);
}

Result<UnusedDetached> detach_unused(ConfigfsOps& ops, std::string_view tag,
                                     const std::vector<std::string>& in_use,
                                     const AttachOptions& opts) {
    UnusedDetached out;
    if (tag.empty()) {
        return out;  // no mark to know ours by: touch nothing
    }
    auto ids = list_attached(ops, opts);
    if (!ids) {
        return std::move(ids).error();
    }
    for (const std::string& id : *ids) {
        if (std::find(in_use.begin(), in_use.end(), id) != in_use.end()) {
            continue;
        }
        auto serial = attached_serial(ops, id, opts);
        if (!serial) {
            if (serial.error().code() != ENOENT) {  // ENOENT: detached meanwhile
                out.left.push_back(std::move(serial).error());
            }
            continue;
        }
        if (*serial != owner_serial(tag, id)) {
            spdlog::debug("tcmu: device {} is not ours (serial \"{}\"); left alone", id,
                          escape_for_log(*serial));
            continue;
        }
        auto config = attached_config(ops, id, opts);
        const std::string what = config ? *config : std::string("no dev_config");
        if (Result<void> done = detach(ops, id, opts); !done) {
            spdlog::warn("tcmu: device {} ({}) is ours and no sandbox uses it, but it stays: {}",
                         id, escape_for_log(what), done.error().message());
            out.left.push_back(std::move(done).error());
            continue;
        }
        spdlog::info("tcmu: detached device {} ({}): ours, and no sandbox uses it", id,
                     escape_for_log(what));
        out.detached.push_back(id);
    }
    return out;
}

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

Result<void> detach(std::string_view id, const DeviceIdentity& expected,
                    const AttachOptions& opts) {
    return detach(real_configfs_ops(), id, expected, opts);
}

Result<void> detach(ConfigfsOps& ops, std::string_view id, const DeviceIdentity& expected,
                    const AttachOptions& opts) {
    if (!is_valid_id(id)) {
        return invalid_id("detach tcmu device", id);
    }
    if (ops.exists(DevicePaths(id, opts).core)) {
        if (Result<void> same = check_attached(ops, id, expected, opts); !same) {
            return std::move(same).error().within("detach tcmu device " + std::string(id));
        }
    }
    return detach(ops, id, opts);
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
        // A mounted disk has no holders; an exclusive open tells (and so does a dm table).
        const std::string dev = opts.dev_root + "/" + *disk;
        if (Result<void> free = ops.open_exclusive(dev); !free) {
            if (free.error().code() == EBUSY) {
                return Error(action, EBUSY,
                             dev + " is mounted or open exclusively; unmount it first");
            }
            if (free.error().code() != ENOENT && free.error().code() != ENXIO) {
                return std::move(free).error().within(action);
            }
        }
    }
    // The reverse of attach.
    if (Result<void> r = remove_parts(ops, paths, true, action); !r) {
        return r;
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

Result<OpenedConfig> open_config_beneath(const ConfigLocation& location, uid_t owner_uid) {
    const std::string path = location.dir + "/" + location.relative;
    const std::string action = "open TCMU config " + escape_for_log(path);
    // The allowed folder itself is the operator's choice and may be reached through symlinks.
    UniqueFd root(::open(location.dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!root) {
        return errno_error("open --tcmu-config-dir " + location.dir).within(action);
    }
    OpenedConfig out;
    const auto slash = location.relative.rfind('/');
    if (slash == std::string::npos) {
        out.dir = std::move(root);
        out.name = location.relative;
    } else {
        out.dir = UniqueFd(
            open_beneath(root.get(), location.relative.substr(0, slash), O_PATH | O_DIRECTORY, 0));
        if (!out.dir) {
            return beneath_error(action, errno);
        }
        out.name = location.relative.substr(slash + 1);
    }
    // O_NONBLOCK: a FIFO put in place of the config must not hang the worker in open().
    out.file = UniqueFd(open_beneath(out.dir.get(), out.name, O_RDONLY | O_NONBLOCK | O_NOCTTY, 0));
    if (!out.file) {
        return beneath_error(action, errno);
    }
    struct stat st {};
    if (::fstat(out.file.get(), &st) != 0) {
        return errno_error(action);
    }
    if (!S_ISREG(st.st_mode)) {
        return Error(action, EACCES, "not a regular file");
    }
    if (st.st_uid != owner_uid) {
        return Error(
            action, EACCES,
            "owned by uid " + std::to_string(st.st_uid) + "; a TCMU config must be owned by " +
                (owner_uid == 0 ? std::string("root") : "uid " + std::to_string(owner_uid)));
    }
    if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
        return Error(
            action, EACCES,
            "mode " + octal_mode(st.st_mode) + " lets group or others write it; chmod go-w it");
    }
    return out;
}

Result<OpenedConfig> open_allowed_config(const OriginPolicy& policy,
                                         const std::string& config_path) {
    auto location = locate_config(policy, config_path);
    if (!location) {
        return std::move(location).error();
    }
    return open_config_beneath(*location, policy.owner_uid);
}

}  // namespace wrenn::tcmu
