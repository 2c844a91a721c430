#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agent/state/sandbox.hpp"
#include "agent/state/template_image.hpp"
#include "common/result.hpp"
#include "dm/snapshot_format.hpp"

namespace wrenn::agent {

// What the running kernel offers; a missing piece comes with the reason, for /healthz.
struct KernelSupport {
    bool device_mapper = false;
    bool loop = false;
    bool tcmu = false;
    std::string device_mapper_reason;
    std::string loop_reason;
    std::string tcmu_reason;
    // The kernel has device-mapper (its misc device is registered) even if `device_mapper` is
    // false because the agent cannot use it: then snapshots may exist that it cannot see.
    bool device_mapper_in_kernel = false;
};

struct AttachedOrigin {
    std::string device;  // "/dev/loop3", "/dev/sda"
    std::uint64_t size_bytes = 0;
};

struct SnapshotInfo {
    bool exists = false;
    int open_count = 0;
    bool suspended = false;  // its I/O waits in the kernel (see suspend_snapshot)
};

// A filesystem's space as statvfs sees it, for an unprivileged writer (f_bavail).
struct FreeSpace {
    std::uint64_t free_bytes = 0;
    std::uint64_t size_bytes = 0;
};

// A wrenn snapshot device in the kernel and whose it is, by its dm UUID and our state dir's tag,
// with what the same query told of it: the CoW device of its live table (empty: no live
// snapshot table) and whether its I/O is suspended. Recovery decides from this one listing and
// asks the kernel nothing more per device.
struct ListedDevice {
    std::string id;
    dm::DeviceOwner owner = dm::DeviceOwner::Ours;
    std::string cow_device;  // "major:minor" on Linux
    bool suspended = false;
};

struct SnapshotUsage {
    enum class State { Active, Invalid, Overflow, Other };
    State state = State::Active;
    std::uint64_t allocated_bytes = 0;
    std::uint64_t total_bytes = 0;
};

// A copy of a CoW file that copy_cow made and has not named yet: commit() fsyncs it and gives it
// its name; destroyed uncommitted, the copy is removed.
class PendingCopy {
  public:
    virtual ~PendingCopy() = default;
    virtual Result<void> commit() = 0;
    // How the bytes were copied: "reflink", "copy_file_range", ...
    [[nodiscard]] virtual std::string method() const = 0;
    // The file that holds the copy until commit() (an export reads it there and never commits).
    [[nodiscard]] virtual std::string path() const = 0;
};

struct FlattenResult {
    std::uint64_t size_bytes = 0;
    std::size_t chunks_applied = 0;
    std::string method;
    // The origin chunks the output took from the CoW, and their size: what differs from the
    // origin, so that the new image's digest is the origin's with only those blocks reread.
    std::vector<std::uint64_t> changed_chunks;
    std::uint64_t chunk_bytes = 0;
};

// The kernel as the sandbox lifecycle sees it. LinuxPlatform composes loop/, dm/, tcmu/ and
// flatten/; the unit tests use a fake. Every call may block: callers run them on the worker
// pool, never on the io_context.
class Platform {
  public:
    virtual ~Platform() = default;

    // Cheap: answered from what the platform learned at start (no kernel call per request).
    virtual KernelSupport support() = 0;

    struct OriginCounts {
        std::size_t loops = 0;
        std::size_t tcmu = 0;
    };
    virtual OriginCounts attached_origins() = 0;

    // A template image as it is now: opened without following symlinks, and refused unless it
    // is a regular file owned by root and not writable by others (EPERM, with the reason; ELOOP
    // for a symlink; ENOENT). The identity comes back without its digest.
    virtual Result<TemplateIdentity> inspect_template(const std::string& path) = 0;
    // The image at `path` opened as inspect_template opens it, and only if it is `expected` in
    // exactly that state (ESTALE otherwise): what a digest is read from (template_blocks.hpp).
    virtual Result<TemplateImage> open_template_version(const std::string& path,
                                                        const TemplateIdentity& expected) = 0;

    // Shared origins, reference-counted by OriginSpec::key(): the first acquire attaches (or
    // finds again, after a restart), the last release lets go.
    // A loop origin with an identity is the image with that device and inode: ESTALE when the
    // path now names another file. Its size is the loop device's, not the file's.
    virtual Result<AttachedOrigin> acquire_origin(const OriginSpec& origin) = 0;
    // Whether the API may attach this TCMU origin (--tcmu-config-dir, --tcmu-handler), checked
    // before every acquire that the API causes. In this order: the values and the allowlist
    // (no file touched), the kernel's TCMU support, then the config file itself, opened without
    // following symlinks. Errno: EINVAL or ENOENT (a bad value, no such config), EACCES (refused
    // by the allowlist), ENODEV (no TCMU in this kernel).
    virtual Result<void> check_tcmu_origin(const OriginSpec& origin) = 0;
    virtual void release_origin(const OriginSpec& origin) = 0;

    // Attaches the CoW file on a read-write loop and creates the persistent snapshot `name`
    // over origin + CoW. Returns the device path, which exists on return. The CoW loop lives
    // exactly as long as the snapshot holds it (autoclear), so nothing leaks on failure or crash.
    virtual Result<std::string> create_snapshot(const std::string& id,
                                                const std::string& origin_device,
                                                std::uint64_t origin_bytes,
                                                const std::string& cow_path) = 0;
    // Removes the snapshot device, with a bounded retry while it is busy; never deferred.
    // EBUSY: still held open (detail has the open count); ENXIO: there is no such device.
    virtual Result<void> remove_snapshot(const std::string& id) = 0;
    virtual Result<std::optional<SnapshotInfo>> snapshot_info(const std::string& id) = 0;
    // Stops the snapshot's I/O (in-flight I/O completes, new I/O waits in the kernel), and lets
    // it run again. Both are idempotent; ENXIO: there is no such device.
    virtual Result<void> suspend_snapshot(const std::string& id) = 0;
    virtual Result<void> resume_snapshot(const std::string& id) = 0;
    // The space of the filesystem that holds `dir` (statvfs).
    virtual Result<FreeSpace> free_space(const std::string& dir) = 0;
    virtual Result<SnapshotUsage> snapshot_usage(const std::string& id) = 0;
    // Every wrenn- snapshot device in the kernel, ours or not.
    virtual Result<std::vector<ListedDevice>> list_snapshots() = 0;
    // Whether the listed device's live table has as its CoW a loop backed by exactly this file
    // (same device and inode). false when it had no live table, or the CoW device is gone or
    // is not a loop.
    virtual Result<bool> snapshot_over_cow(const ListedDevice& device,
                                           const std::string& cow_path) = 0;

    // Whether a paused CoW can be used as a snapshot again: false when the kernel marked its
    // exception store invalid. An Error with errno 0 is a store that is not one (corrupt, or
    // for another origin size); other errnos are the I/O that failed.
    virtual Result<bool> cow_store_valid(const std::string& cow_path,
                                         std::uint64_t origin_bytes) = 0;

    // A point-in-time copy of the CoW file `from` for a new sandbox's `to` (which must not
    // exist): FICLONE where the filesystem can, else its data ranges. `from` must not change
    // meanwhile (its device suspended or gone). ETIMEDOUT past the deadline.
    virtual Result<std::unique_ptr<PendingCopy>> copy_cow(
        const std::string& from, const std::string& to,
        std::optional<std::chrono::steady_clock::time_point> deadline) = 0;

    // Writes a standalone image of origin + CoW to `out` (never overwriting it).
    virtual Result<FlattenResult> flatten(const std::string& origin, const std::string& cow_path,
                                          const std::string& out) = 0;

    // Boot-time cleanup: let go of loops whose backing file is under `dir`, and of the TCMU
    // devices attached for these origins (only ours: overlaybd shares the same HBA; a device
    // whose dev_config is not this origin's is left alone).
    // Returns how many were released.
    virtual Result<std::size_t> release_loops_under(const std::string& dir) = 0;
    // A deleted template: lets go of the loops whose backing file is exactly `path` that no
    // origin held now uses. Returns how many were released.
    virtual Result<std::size_t> release_loops_of(const std::string& path) = 0;
    virtual Result<std::size_t> detach_tcmu_origins(const std::vector<OriginSpec>& origins) = 0;
    // Startup recovery and cleanup: detaches every TCMU device that carries this state dir's
    // mark (its serial, see tcmu::owner_serial) and that no origin held now uses: left by a
    // destroy or pause killed between removing the sandbox's device and releasing its origin,
    // or by an attach killed half-way. A device of another state dir, or with no mark, is never
    // touched; one whose disk is in use (holders, or open exclusively) stays, and why goes to
    // `problems`. Returns how many were detached.
    virtual Result<std::size_t> detach_unused_tcmu(std::vector<std::string>& problems) = 0;
};

}  // namespace wrenn::agent
