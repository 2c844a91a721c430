// The only file that talks to device-mapper: through libdevmapper for everything that changes
// devices, and straight through the DM_TABLE_STATUS ioctl for the read-only queries, which
// then need no process-wide lock and never wait behind a create or remove.
#include "dm/device_mapper.hpp"

#include <fcntl.h>
#include <libdevmapper.h>
#include <linux/dm-ioctl.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "common/unique_fd.hpp"

namespace wrenn::dm {

namespace {

// libdm is not thread-safe: it keeps process-global, unlocked state that every task touches --
// the cached /dev/mapper/control fd, the list of pending /dev/mapper node operations that
// dm_udev_wait() drains (two threads could apply each other's half-finished node ops), the
// udev-sync switch, the name-mangling mode and the log function. The agent calls us from a
// worker pool, so every call into libdm holds this one process-wide mutex (not a per-object
// one: any number of DeviceMapper values share that global state).
std::mutex& libdm_mutex() {
    static std::mutex m;
    return m;
}

// Retry pause while a device is busy; short, because the holder is usually just closing it.
constexpr std::chrono::milliseconds kBusyRetryPause{50};

constexpr std::string_view kDevDir = "/dev/mapper/";
// linux/dm-ioctl.h DM_NAME_LEN and DM_UUID_LEN, including the terminating NUL.
constexpr std::size_t kNameLen = 128;
constexpr std::size_t kUuidLen = 129;

// libdm's messages go to spdlog at debug instead of stderr: failures reach callers through our
// Error (decided on errno), so libdm's own, sometimes misleading, error lines are only context.
__attribute__((format(printf, 5, 6))) void log_from_libdm(int level, const char* file, int line,
                                                          int dm_errno_or_class, const char* f,
                                                          ...) {
    if (!spdlog::should_log(spdlog::level::debug)) {
        return;
    }
    char buf[1024];
    va_list ap;
    va_start(ap, f);
    std::vsnprintf(buf, sizeof buf, f, ap);
    va_end(ap);
    spdlog::debug("libdm[{}] {}:{}: {} (errno/class {})", level & 0x0f, file ? file : "?", line,
                  buf, dm_errno_or_class);
}

struct TaskDeleter {
    void operator()(dm_task* t) const noexcept { dm_task_destroy(t); }
};
using Task = std::unique_ptr<dm_task, TaskDeleter>;

// A dm task of `type` for device `name` (empty: no name, e.g. LIST).
Result<Task> make_task(int type, const std::string& name, const std::string& action) {
    Task t(dm_task_create(type));
    if (!t) {
        return Error(action, ENOMEM, "dm_task_create");
    }
    if (!name.empty() && !dm_task_set_name(t.get(), name.c_str())) {
        return Error(action, EINVAL, "bad device name");
    }
    return t;
}

// Flags for tasks that create or remove nodes. Without udev, libdm must make /dev/mapper nodes
// itself: disabling the dm rules makes it skip its udev checks and act (libdm-common.c
// _set_cookie_flags / add_dev_node). With udev, udev makes the node; sandbox roots are not for
// the host's subsystem (LVM) or other (desktop, automount, blkid) rules.
std::uint16_t cookie_flags(bool udev) {
    return udev ? (DM_UDEV_DISABLE_SUBSYSTEM_RULES_FLAG | DM_UDEV_DISABLE_OTHER_RULES_FLAG)
                : (DM_UDEV_DISABLE_DM_RULES_FLAG | DM_UDEV_DISABLE_SUBSYSTEM_RULES_FLAG);
}

// Runs a task; returns 0 or the ioctl's errno (EIO when libdm failed without one). Node-changing
// tasks carry a cookie and are always waited on, failure included: the wait releases the udev
// semaphore (else it leaks) and applies libdm's pending /dev/mapper node operations.
int run_task(dm_task* t, bool with_cookie, bool udev) {
    std::uint32_t cookie = 0;
    if (with_cookie && !dm_task_set_cookie(t, &cookie, cookie_flags(udev))) {
        return EIO;
    }
    const int ok = dm_task_run(t);
    const int err = ok ? 0 : dm_task_get_errno(t);
    if (with_cookie) {
        dm_udev_wait(cookie);
    }
    if (ok) {
        return 0;
    }
    return err != 0 ? err : EIO;
}

// DM_DEVICE_INFO; nullopt when the device does not exist. Caller holds the libdm mutex.
Result<std::optional<DeviceInfo>> info_locked(const std::string& name) {
    const std::string action = "query " + name;
    auto t = make_task(DM_DEVICE_INFO, name, action);
    if (!t) {
        return std::move(t).error();
    }
    // libdm reports a missing device as success with exists = 0; older paths use ENXIO.
    if (const int err = run_task(t->get(), false, false); err != 0) {
        if (err == ENXIO) {
            return std::optional<DeviceInfo>();
        }
        return Error(action, err);
    }
    dm_info di{};
    if (!dm_task_get_info(t->get(), &di)) {
        return Error(action, EIO, "dm_task_get_info");
    }
    if (!di.exists) {
        return std::optional<DeviceInfo>();
    }
    DeviceInfo out;
    out.exists = true;
    out.open_count = di.open_count;
    out.major = static_cast<std::uint32_t>(di.major);
    out.minor = static_cast<std::uint32_t>(di.minor);
    out.suspended = di.suspended != 0;
    return std::optional<DeviceInfo>(out);
}

// One REMOVE attempt; 0 or errno. Caller holds the libdm mutex.
int remove_once_locked(const std::string& name, bool udev) {
    Task t(dm_task_create(DM_DEVICE_REMOVE));
    if (!t || !dm_task_set_name(t.get(), name.c_str())) {
        return ENOMEM;
    }
    return run_task(t.get(), true, udev);
}

// The first (only) target of a TABLE or STATUS query: its type and parameters.
struct Target {
    std::string type;  // empty: no live table (a create that never reached its resume)
    std::string params;
    std::string uuid;
    bool suspended = false;  // the device's I/O waits in the kernel (DM_SUSPEND_FLAG)
};

Result<UniqueFd> open_control(const std::string& action) {
    UniqueFd control(::open("/dev/mapper/control", O_RDWR | O_CLOEXEC));
    if (!control) {
        return errno_error("open /dev/mapper/control").within(action);
    }
    return control;
}

// DM_TABLE_STATUS straight on the control device `control`, without libdm and its lock: the
// kernel serialises its own state. table: the loaded table (DM_STATUS_TABLE_FLAG), else the
// status. nullopt when the device does not exist.
Result<std::optional<Target>> query_target_direct(int control, bool table, const std::string& name,
                                                  const std::string& action) {
    if (name.size() >= DM_NAME_LEN) {
        return Error(action, EINVAL, "bad device name");
    }
    // A snapshot's status line is under 100 bytes; the buffer grows if the kernel says so.
    std::vector<std::uint64_t> storage((sizeof(dm_ioctl) + 1024) / sizeof(std::uint64_t));
    for (;;) {
        auto* io = reinterpret_cast<dm_ioctl*>(storage.data());
        std::memset(io, 0, sizeof *io);
        io->version[0] = DM_VERSION_MAJOR;
        io->data_size = static_cast<std::uint32_t>(storage.size() * sizeof(std::uint64_t));
        io->data_start = sizeof(dm_ioctl);
        io->flags = table ? DM_STATUS_TABLE_FLAG : 0;
        std::memcpy(io->name, name.data(), name.size());
        if (::ioctl(control, DM_TABLE_STATUS, io) != 0) {
            if (errno == ENXIO) {
                return std::optional<Target>();
            }
            return errno_error(action);
        }
        if ((io->flags & DM_BUFFER_FULL_FLAG) != 0) {
            if (storage.size() > (1u << 20)) {
                return Error(action, EOVERFLOW, "the kernel's answer does not fit in 8 MiB");
            }
            storage.resize(storage.size() * 4);
            continue;
        }
        Target out;
        out.uuid.assign(io->uuid, strnlen(io->uuid, DM_UUID_LEN));
        out.suspended = (io->flags & DM_SUSPEND_FLAG) != 0;
        if (io->target_count == 0) {
            return std::optional<Target>(std::move(out));  // a device with no table loaded
        }
        const char* base = reinterpret_cast<const char*>(io);
        const std::size_t size =
            std::min<std::size_t>(io->data_size, storage.size() * sizeof(std::uint64_t));
        const char* end = base + size;
        if (io->data_start + sizeof(dm_target_spec) > size) {
            return Error(action, EIO, "the kernel's answer is truncated");
        }
        const auto* spec = reinterpret_cast<const dm_target_spec*>(base + io->data_start);
        out.type.assign(spec->target_type, strnlen(spec->target_type, DM_MAX_TYPE_NAME));
        const char* params = reinterpret_cast<const char*>(spec + 1);
        out.params.assign(params, strnlen(params, static_cast<std::size_t>(end - params)));
        return std::optional<Target>(std::move(out));
    }
}

bool is_node_for(const std::string& path, std::uint32_t major, std::uint32_t minor) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 && S_ISBLK(st.st_mode) &&
           st.st_rdev == makedev(major, minor);
}

}  // namespace

Result<DeviceMapper> DeviceMapper::open() {
    static std::once_flag log_once;
    std::call_once(log_once, [] { dm_log_with_errno_init(&log_from_libdm); });

    std::lock_guard lock(libdm_mutex());
    // udev's control socket exists exactly while udevd runs (what libudev's
    // udev_queue_get_udev_is_active checks too). Without udev, libdm must not wait for it.
    const bool udev = ::access("/run/udev/control", F_OK) == 0;
    dm_udev_set_sync_support(udev ? 1 : 0);

    char version[64] = {};
    if (!dm_driver_version(version, sizeof version)) {
        const bool has_control = ::access("/dev/mapper/control", F_OK) == 0;
        return Error("open device-mapper", has_control ? ENODEV : ENOENT,
                     has_control ? "is dm-mod loaded?" : "/dev/mapper/control is missing");
    }
    spdlog::debug("device-mapper driver {}, nodes managed by {}", version, udev ? "udev" : "libdm");
    return DeviceMapper(udev);
}

std::string DeviceMapper::device_path(std::string_view name) {
    return std::string(kDevDir) + std::string(name);
}

Result<std::string> DeviceMapper::create_snapshot(const std::string& name, const std::string& uuid,
                                                  std::uint64_t origin_sectors,
                                                  std::string_view origin_dev,
                                                  std::string_view cow_dev) {
    const std::string action = "create " + name;
    if (name.empty() || name.size() >= kNameLen || uuid.size() >= kUuidLen ||
        name.find('/') != std::string::npos || origin_sectors == 0) {
        return Error(action, EINVAL, "bad name, uuid or size");
    }
    const std::string params = snapshot_table_params(origin_dev, cow_dev);
    const std::string path = device_path(name);

    std::lock_guard lock(libdm_mutex());
    // Undo a partly made device: remove it and any node it got.
    auto undo = [&] {
        if (auto existing = info_locked(name); existing && existing->has_value()) {
            // A udev probe may hold the fresh device for a moment: a few short retries.
            int err = remove_once_locked(name, udev_);
            for (int i = 0; err == EBUSY && i < 20; ++i) {
                std::this_thread::sleep_for(kBusyRetryPause);
                err = remove_once_locked(name, udev_);
            }
            if (err != 0) {
                spdlog::warn("{}: could not remove the half-made device: {}", action,
                             describe_errno(err));
            }
        }
        if (!udev_) {
            struct stat st {};
            if (::lstat(path.c_str(), &st) == 0 && S_ISBLK(st.st_mode)) {
                ::unlink(path.c_str());
            }
        }
    };

    // Three steps, as libdm's own create-with-table does internally, but each with its own
    // errno: this libdm (1.02.185) reports a failed load inside a one-shot create with the
    // errno of its successful revert (0), so the caller could not tell EINVAL from ENXIO.
    // 1. An empty device with our name and uuid. No node yet (libdm adds it on resume).
    {
        auto t = make_task(DM_DEVICE_CREATE, name, action);
        if (!t) {
            return std::move(t).error();
        }
        if (!uuid.empty() && !dm_task_set_uuid(t->get(), uuid.c_str())) {
            return Error(action, EINVAL, "bad uuid");
        }
        if (const int err = run_task(t->get(), false, udev_); err != 0) {
            // The kernel answers a taken name or uuid with EBUSY (dm-ioctl.c dm_hash_insert);
            // callers get EEXIST, and the other device is not ours to remove.
            if (err == EBUSY) {
                return Error(action, EEXIST, "name or uuid in use");
            }
            return Error(action, err);
        }
    }
    // 2. Load the snapshot table into the inactive slot.
    {
        auto t = make_task(DM_DEVICE_RELOAD, name, action);
        if (!t) {
            undo();
            return std::move(t).error();
        }
        if (!dm_task_add_target(t->get(), 0, origin_sectors, "snapshot", params.c_str())) {
            undo();
            return Error(action, ENOMEM, "dm_task_add_target");
        }
        if (const int err = run_task(t->get(), false, udev_); err != 0) {
            undo();
            return Error(
                action, err,
                "load table \"0 " + std::to_string(origin_sectors) + " snapshot " + params + "\"");
        }
    }
    // 3. Resume: the table goes live and the /dev/mapper node is made (by udev or libdm).
    {
        auto t = make_task(DM_DEVICE_RESUME, name, action);
        if (!t) {
            undo();
            return std::move(t).error();
        }
        if (const int err = run_task(t->get(), true, udev_); err != 0) {
            undo();
            return Error(action, err, "resume");
        }
    }

    auto created = info_locked(name);
    if (!created || !created->has_value()) {
        undo();
        return created ? Error(action, ENXIO, "device vanished after create")
                       : std::move(created).error();
    }
    const DeviceInfo& di = **created;
    if (!is_node_for(path, di.major, di.minor)) {
        if (udev_) {
            undo();
            return Error(action, ENOENT, path + " did not appear");
        }
        // libdm without udev should have made the node (DM_UDEV_DISABLE_DM_RULES_FLAG); if this
        // libdm did not, make it ourselves from the kernel's major:minor.
        spdlog::debug("{}: libdm made no {}; creating it", action, path);
        ::unlink(path.c_str());
        if (::mknod(path.c_str(), S_IFBLK | 0600, makedev(di.major, di.minor)) != 0) {
            Error error = errno_error("mknod " + path).within(action);
            undo();
            return error;
        }
    }
    return path;
}

Result<void> DeviceMapper::remove(const std::string& name, std::chrono::milliseconds time_limit) {
    const std::string action = "remove " + name;
    const auto deadline = std::chrono::steady_clock::now() + time_limit;
    const std::string path = device_path(name);
    for (int attempt = 1;; ++attempt) {
        int err = 0;
        {
            std::lock_guard lock(libdm_mutex());
            err = remove_once_locked(name, udev_);
            if (err == 0) {
                // libdm removes the node itself without udev; a stale node would otherwise
                // point at whatever device reuses the minor number.
                struct stat st {};
                if (!udev_ && ::lstat(path.c_str(), &st) == 0 && S_ISBLK(st.st_mode)) {
                    spdlog::debug("{}: libdm left {}; removing it", action, path);
                    ::unlink(path.c_str());
                }
                return success();
            }
        }
        if (err != EBUSY) {
            return Error(action, err);
        }
        const auto now = std::chrono::steady_clock::now();
        if (now >= deadline) {
            break;
        }
        const auto pause =
            std::min<std::chrono::steady_clock::duration>(kBusyRetryPause, deadline - now);
        spdlog::info("{}: device busy (attempt {}), retrying", action, attempt);
        std::this_thread::sleep_for(pause);
    }
    std::lock_guard lock(libdm_mutex());
    auto still = info_locked(name);
    std::string detail = "open count ?";
    if (still && still->has_value()) {
        detail = "open count " + std::to_string((*still)->open_count);
    }
    return Error(action, EBUSY, detail);
}

Result<std::optional<DeviceInfo>> DeviceMapper::info(const std::string& name) {
    std::lock_guard lock(libdm_mutex());
    return info_locked(name);
}

Result<void> DeviceMapper::suspend(const std::string& name) {
    const std::string action = "suspend " + name;
    std::lock_guard lock(libdm_mutex());
    auto t = make_task(DM_DEVICE_SUSPEND, name, action);
    if (!t) {
        return std::move(t).error();
    }
    if (!dm_task_skip_lockfs(t->get())) {
        return Error(action, ENOMEM, "dm_task_skip_lockfs");
    }
    if (const int err = run_task(t->get(), false, udev_); err != 0) {
        return Error(action, err);
    }
    return success();
}

Result<void> DeviceMapper::resume(const std::string& name) {
    const std::string action = "resume " + name;
    std::lock_guard lock(libdm_mutex());
    auto t = make_task(DM_DEVICE_RESUME, name, action);
    if (!t) {
        return std::move(t).error();
    }
    // A resume sends a change uevent: carry the cookie and our rule flags, as create does.
    if (const int err = run_task(t->get(), true, udev_); err != 0) {
        return Error(action, err);
    }
    return success();
}

Result<std::vector<ListedSnapshot>> DeviceMapper::list_snapshots() {
    const std::string action = "list device-mapper devices";
    std::vector<std::string> candidates;
    {
        std::lock_guard lock(libdm_mutex());
        auto t = make_task(DM_DEVICE_LIST, {}, action);
        if (!t) {
            return std::move(t).error();
        }
        if (const int err = run_task(t->get(), false, false); err != 0) {
            return Error(action, err);
        }
        dm_names* names = dm_task_get_names(t->get());
        if (names != nullptr && names->dev != 0) {
            for (;;) {
                std::string_view n(names->name);
                if (n.substr(0, kNamePrefix.size()) == kNamePrefix) {
                    candidates.emplace_back(n);
                }
                if (names->next == 0) {
                    break;
                }
                names = reinterpret_cast<dm_names*>(reinterpret_cast<char*>(names) + names->next);
            }
        }
    }
    std::vector<ListedSnapshot> out;
    if (candidates.empty()) {
        return out;
    }
    // One control descriptor for the whole listing: a host with a thousand sandboxes asks a
    // thousand times, and each open and close of the control device costs as much as a query.
    auto control = open_control(action);
    if (!control) {
        return std::move(control).error();
    }
    for (auto& name : candidates) {
        // The device may be removed between LIST and TABLE: that is not an error.
        auto target = query_target_direct(control->get(), true, name, "query table of " + name);
        if (!target) {
            return std::move(target).error().within(action);
        }
        if (!target->has_value()) {
            continue;
        }
        // A snapshot under our name, or a device a wrenn agent created (a wrenn UUID) whose
        // create was cut short before its table went live: killed between the two ioctls.
        const std::string& uuid = (*target)->uuid;
        const bool wrenn_uuid = uuid.compare(0, kUuidPrefix.size(), kUuidPrefix) == 0;
        const bool snapshot = (*target)->type == "snapshot";
        if (!snapshot && !wrenn_uuid) {
            continue;
        }
        ListedSnapshot listed;
        listed.name = std::move(name);
        listed.uuid = uuid;
        listed.suspended = (*target)->suspended;
        // A table the kernel printed in another form is no snapshot of ours: no devices.
        if (auto devices = parse_snapshot_table((*target)->params); snapshot && devices) {
            listed.origin_dev = std::move(devices->origin);
            listed.cow_dev = std::move(devices->cow);
        }
        out.push_back(std::move(listed));
    }
    return out;
}

Result<SnapshotStatus> DeviceMapper::snapshot_status(const std::string& name) {
    const std::string action = "query status of " + name;
    auto control = open_control(action);
    if (!control) {
        return std::move(control).error();
    }
    auto target = query_target_direct(control->get(), false, name, action);
    if (!target) {
        return std::move(target).error();
    }
    if (!target->has_value()) {
        return Error(action, ENXIO);
    }
    if ((*target)->type != "snapshot") {
        return Error(action, EINVAL, "not a snapshot (target \"" + (*target)->type + "\")");
    }
    auto status = parse_snapshot_status((*target)->params);
    if (!status) {
        return std::move(status).error().within(action);
    }
    return status;
}

Result<std::pair<std::string, std::string>> DeviceMapper::snapshot_devices(
    const std::string& name) {
    const std::string action = "query table of " + name;
    auto control = open_control(action);
    if (!control) {
        return std::move(control).error();
    }
    auto target = query_target_direct(control->get(), true, name, action);
    if (!target) {
        return std::move(target).error();
    }
    if (!target->has_value()) {
        return Error(action, ENXIO);
    }
    if ((*target)->type != "snapshot") {
        return Error(action, EINVAL, "not a snapshot (target \"" + (*target)->type + "\")");
    }
    auto devices = parse_snapshot_table((*target)->params);
    if (!devices) {
        return std::move(devices).error().within(action);
    }
    return std::make_pair(std::move(devices->origin), std::move(devices->cow));
}

}  // namespace wrenn::dm
