#pragma once

// Attach and detach TCMU block devices through configfs, in the order overlaybd-attacher uses:
// a core device under target/core/user_999999999, a tcm_loop target that exports it as a SCSI
// disk, and the wait for that disk's /dev/sdX. configfs.cpp is the only code that writes to
// configfs; everything else here goes through ConfigfsOps so that tests can run it over a fake.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.hpp"
#include "common/unique_fd.hpp"
#include "tcmu/origin_policy.hpp"

namespace wrenn::tcmu {

struct AttachRequest {
    std::string id;           // decimal, 1..13 digits (see is_valid_id)
    std::string config_path;  // handler argument: overlaybd's config.v1.json, a .qcow2 for "qcow"
    std::string handler = "overlaybd";
    std::optional<std::uint64_t> size_bytes;  // dev_size; the qcow handler needs it
    unsigned max_data_area_mb = 4;            // overlaybd's value
    unsigned cmd_time_out_s = 0;              // 0: leave the kernel's default
    // Written to wwn/vpd_unit_serial right after the core device is made, before anything else:
    // the agent's mark (owner_serial), by which recovery knows its own devices. Empty: nothing is
    // written (the operator's CLI). See is_valid_serial.
    std::string serial;
    // Set for an attach the API asked for: the config lies under one of these folders, and the
    // attach log goes only to a file beneath the config's own folder (contained_result_file),
    // opened without following symlinks, 0600. Unset: overlaybd-attacher's rule
    // (result_file_for_config), for the operator's CLI.
    std::optional<OriginPolicy> api_policy;
};

// What a device id was attached for: the values attach writes as dev_config and dev_size, read
// back from attrib/ before an attached id is reused or detached.
struct DeviceIdentity {
    std::string handler;
    std::string config_path;
    std::optional<std::uint64_t> size_bytes;
};
DeviceIdentity identity_of(const AttachRequest& req);

struct AttachOptions {
    std::string configfs_root = "/sys/kernel/config";
    std::string sys_root = "/sys";
    std::string dev_root = "/dev";
    int attempts = 5;  // whole attach tries
    std::chrono::milliseconds retry_delay{1000};
    int enable_eagain_retries = 100;  // overlaybd: 100 x 50 ms
    std::chrono::milliseconds enable_retry_delay{50};
    std::chrono::milliseconds disk_wait{10000};  // per try, for /dev/sdX to appear
    // Write -1 to attrib/nl_reply_supported before enable, so the kernel does not wait for the
    // backstore to answer the "device added" netlink event. Checked in the VM (6.1): once any
    // tcmu-runner has announced that it replies and then exited, every later enable with no
    // backstore running blocks forever in uninterruptible sleep. The disk wait still proves
    // the backstore took the device. (overlaybd-attacher leaves the kernel default.)
    bool skip_netlink_reply = true;
    // After enable and before the LUN is linked, how long a userspace handler (tcmu-runner,
    // overlaybd-tcmu) has to open the device's UIO node. Without one, the SCSI scan that linking
    // starts would wait for its INQUIRY to time out (about 43 s in the VM, with the nexus stuck);
    // so a device nobody takes is undone and the attach fails at once, without retries.
    std::chrono::milliseconds handler_wait{3000};
    std::chrono::milliseconds handler_poll{20};
    // The handler must still hold the node this long after it was first seen: tcmu-runner opens
    // the node before its handler opens the config, and closes it again when that fails.
    std::chrono::milliseconds handler_settle{200};
};

// The file operations attach/detach need, by path, each failing with the errno it got. The real
// implementation (real_configfs_ops) calls the kernel; tests inject a fake that records calls.
// Time is here too so that a fake can make retries and waits instantaneous.
class ConfigfsOps {
  public:
    virtual ~ConfigfsOps() = default;
    virtual Result<void> make_dir(const std::string& path) = 0;
    virtual Result<void> remove_dir(const std::string& path) = 0;
    // One write(2) of the whole value: configfs attributes take a value per write.
    virtual Result<void> write_file(const std::string& path, std::string_view value) = 0;
    virtual Result<std::string> read_file(const std::string& path) = 0;
    virtual Result<void> make_symlink(const std::string& target, const std::string& link) = 0;
    virtual Result<void> remove_link(const std::string& path) = 0;
    // Entry names, without "." and "..".
    virtual Result<std::vector<std::string>> list_dir(const std::string& path) = 0;
    virtual bool exists(const std::string& path) = 0;
    // Opens a block device O_EXCL and closes it again: EBUSY while it is mounted or another
    // opener holds it exclusively (mount, device-mapper, mkfs). A plain open(2) without O_EXCL
    // is invisible to this check; the kernel offers no count of those for a SCSI disk.
    virtual Result<void> open_exclusive(const std::string& device) = 0;
    // Opens a block device read-only (shared) and closes it again: ENXIO while its disk is not
    // live yet (device_add_disk makes the node and the sysfs entry before bdev_add).
    virtual Result<void> open_shared(const std::string& device) = 0;
    // A process holding an open descriptor of the character device major:minor, if any.
    // Reads /proc/<pid>/fd only; never opens the device (a TCMU UIO node takes one opener,
    // tcmu_open answers a second with EBUSY, and a probe of ours would race the handler's).
    struct Opener {
        int pid = 0;
        std::string command;  // /proc/<pid>/comm, for the log; may be empty
    };
    virtual Result<std::optional<Opener>> char_device_opener(unsigned major, unsigned minor) = 0;
    virtual std::chrono::steady_clock::time_point now() = 0;
    virtual void sleep_for(std::chrono::milliseconds duration) = 0;
};

// The process-wide implementation that calls the kernel (stateless, thread-safe).
ConfigfsOps& real_configfs_ops();

// Attach: core device, its serial (when the request has one), control (dev_config,
// max_data_area_mb, dev_size), enable (bounded EAGAIN retry), attrib/cmd_time_out, the wait
// (opts.handler_wait) for a userspace handler to open the device's UIO node, loopback
// <wwn>/tpgt_1/lun/lun_0, nexus, LUN symlink, read tpgt_1/address, wait (bounded) for
// /sys/class/scsi_device/<H:C:T>:0/device/block/sdX. Returns "/dev/sdX"; never succeeds
// without the disk. A failed try removes what it created; the whole attach is tried
// opts.attempts times, except when no handler took the device (ETIMEDOUT, naming the handler and
// the backstore to start) or the id is taken. An id taken by a half-made device of this same
// request (judge_existing: HalfMade), left by an attach that was killed, is logged and then taken
// over where it stopped when it is enabled but not exported (its handler may still be acting on
// its announcement: removing and remaking it at once confuses tcmu-runner), else detached and
// made again. Appends a log of what it did (and why it failed) to result_file_for_config(
// config_path) when that config names one.
Result<std::string> attach(const AttachRequest& req, const AttachOptions& opts = {});
Result<std::string> attach(ConfigfsOps& ops, const AttachRequest& req, const AttachOptions& opts);

// Removes the LUN link, lun_0, tpgt_1, the loopback target and the core device, in that order.
// Parts already gone are skipped, so detaching twice (or a half-attached id) succeeds. Refuses
// (EBUSY) while the disk has holders in sysfs or cannot be opened exclusively (mounted, or held
// by device-mapper). With `expected`, also refuses (EEXIST) unless the device's dev_config and
// dev_size are what attach wrote for it (check_attached): never detach another's disk.
Result<void> detach(std::string_view id, const AttachOptions& opts = {});
Result<void> detach(ConfigfsOps& ops, std::string_view id, const AttachOptions& opts);
Result<void> detach(ConfigfsOps& ops, std::string_view id, const DeviceIdentity& expected,
                    const AttachOptions& opts);
Result<void> detach(std::string_view id, const DeviceIdentity& expected,
                    const AttachOptions& opts = {});

// Reads the id's attrib/dev_config (and attrib/dev_size when `expected` sets a size) and errors
// (EEXIST, naming both values) unless they are what attach writes for `expected`. ENOENT when
// the device does not exist.
Result<void> check_attached(ConfigfsOps& ops, std::string_view id, const DeviceIdentity& expected,
                            const AttachOptions& opts);
Result<void> check_attached(std::string_view id, const DeviceIdentity& expected,
                            const AttachOptions& opts = {});

// "/dev/sdX" when the id's core device, loopback target and disk all exist; nullopt otherwise.
Result<std::optional<std::string>> find_attached(std::string_view id,
                                                 const AttachOptions& opts = {});
Result<std::optional<std::string>> find_attached(ConfigfsOps& ops, std::string_view id,
                                                 const AttachOptions& opts);

// Ids of the dev_<id> folders under user_999999999 (valid ids only), sorted.
Result<std::vector<std::string>> list_attached(const AttachOptions& opts = {});
Result<std::vector<std::string>> list_attached(ConfigfsOps& ops, const AttachOptions& opts);

// The config path the device was attached with, from its attrib/dev_config (for adoption).
Result<std::string> attached_config(std::string_view id, const AttachOptions& opts = {});
Result<std::string> attached_config(ConfigfsOps& ops, std::string_view id,
                                    const AttachOptions& opts);

// What attach finds at an id whose core device already exists, read from configfs.
struct ExistingDevice {
    std::string dev_config;      // attrib/dev_config, trimmed; "" when never written
    std::uint64_t dev_size = 0;  // attrib/dev_size; 0 when never written
    std::string serial;          // wwn/vpd_unit_serial's value; "" when never written
    bool enabled = false;        // enable reads 1
    bool exported = false;       // the LUN link exists
    bool disk = false;           // and its /dev/sdX
};

// Whose an existing device is, as attach sees it for a request.
struct ExistingVerdict {
    enum class Kind {
        Foreign,   // another's: another dev_config, dev_size or serial. Never touched.
        Complete,  // this request's, enabled and exported with its disk: attached already.
        HalfMade,  // this request's (or a bare folder), not finished: an attach that was killed.
    };
    Kind kind;
    std::string why;  // for the error or the log line
};

// The decision, pure: Foreign when a value written differs from what this request writes
// (dev_config, dev_size, serial; a value not written yet differs from nothing). Otherwise
// Complete when enabled, exported and with its disk, else HalfMade.
ExistingVerdict judge_existing(const ExistingDevice& found, const AttachRequest& req);

// Reads an existing id's ExistingDevice from configfs (ENOENT when there is no such device).
Result<ExistingDevice> inspect_existing(ConfigfsOps& ops, std::string_view id,
                                        const AttachOptions& opts);

// The serial in the id's wwn/vpd_unit_serial ("" when none was written).
Result<std::string> attached_serial(ConfigfsOps& ops, std::string_view id,
                                    const AttachOptions& opts);

// What detach_unused did.
struct UnusedDetached {
    std::vector<std::string> detached;  // ids
    std::vector<Error> left;            // ours and unused, but could not be detached (in use)
};

// Recovery's sweep: detaches every device whose serial is owner_serial(tag, id) and whose id is
// not in `in_use` (the ids the agent holds for its sandboxes). A device with another serial, or
// none, is never touched; one whose disk has holders or is open exclusively stays (detach
// refuses it: EBUSY) and is reported in `left`. Each detach is logged.
Result<UnusedDetached> detach_unused(ConfigfsOps& ops, std::string_view tag,
                                     const std::vector<std::string>& in_use,
                                     const AttachOptions& opts);
Result<UnusedDetached> detach_unused(std::string_view tag, const std::vector<std::string>& in_use,
                                     const AttachOptions& opts = {});

// How open_beneath resolves a path: openat2, or the O_NOFOLLOW walk it falls back to where the
// kernel has no openat2 (before 5.6); tests run both.
enum class Resolver { openat2, walk };

// Opens `relative` (no "..", "." or empty component) beneath the folder `dirfd` without
// following a symlink anywhere on the way, O_CLOEXEC | O_NOFOLLOW added to `flags`. Returns the
// fd, or -1 with errno set: ELOOP, EXDEV or ENOTDIR when a symlink (or an escape) was refused.
int open_beneath(int dirfd, const std::string& relative, int flags, mode_t mode,
                 Resolver resolver = Resolver::openat2);

// A backstore config opened beneath an allowed folder (see open_config_beneath).
struct OpenedConfig {
    UniqueFd dir;      // O_PATH of the config's own folder
    UniqueFd file;     // the config, read-only
    std::string name;  // its name in `dir`
};

// Opens <location.dir>/<location.relative> without following a symlink at any level beneath
// location.dir (openat2 with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS; on kernels before 5.6, a
// walk of O_NOFOLLOW opens, one component at a time), and checks that it is a regular file
// owned by `owner_uid` and not writable by group or others. EACCES for a refusal (a symlink, a
// foreign owner, a loose mode, not a regular file), ENOENT when it is missing.
Result<OpenedConfig> open_config_beneath(const ConfigLocation& location, uid_t owner_uid);

// open_config_beneath after locate_config: the file-system half of the API's check.
Result<OpenedConfig> open_allowed_config(const OriginPolicy& policy,
                                         const std::string& config_path);

}  // namespace wrenn::tcmu
