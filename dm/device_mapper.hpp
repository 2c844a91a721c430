#pragma once

// wrenn's view of device-mapper: create, inspect and remove the dm-snapshot devices that give
// each sandbox its writable root. device_mapper.cpp is the only file that calls libdevmapper.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/result.hpp"
#include "dm/snapshot_format.hpp"

namespace wrenn::dm {

struct DeviceInfo {
    bool exists = false;
    int open_count = 0;
    std::uint32_t major = 0, minor = 0;
    bool suspended = false;
};

// A device list_snapshots() found: its name and dm UUID (empty when it has none), and what the
// same query said of it: its live snapshot table's devices ("major:minor"; both empty when no
// snapshot table is live) and whether its I/O is suspended.
struct ListedSnapshot {
    std::string name;
    std::string uuid;
    std::string origin_dev;
    std::string cow_dev;
    bool suspended = false;
};

// A checked connection to the kernel's device-mapper through libdm; works with and without udev.
// Owns no kernel object (devices outlive it by design); every call into libdm is serialized
// process-wide, because libdm keeps unlocked global state (see device_mapper.cpp).
class DeviceMapper {
  public:
    // Checks the driver is there (dm_driver_version) and decides how /dev/mapper nodes are
    // managed: by udev when it runs (/run/udev/control exists), else by libdm itself.
    static Result<DeviceMapper> open();

    // Creates, loads and resumes `name` with `0 <origin_sectors> snapshot <params>`; returns the
    // /dev/mapper/<name> path, which exists when this returns. On any failure nothing is left
    // behind (except when the name was already taken: EEXIST leaves the other device alone).
    Result<std::string> create_snapshot(const std::string& name, const std::string& uuid,
                                        std::uint64_t origin_sectors, std::string_view origin_dev,
                                        std::string_view cow_dev);

    // Bounded retry on EBUSY until time_limit; a still-busy device fails with EBUSY and detail
    // "open count N" and is left intact. Removing a device that does not exist: ENXIO error.
    // Never a deferred remove: a device that outlives the call would break a pause.
    Result<void> remove(const std::string& name, std::chrono::milliseconds time_limit);

    // nullopt: no such device.
    Result<std::optional<DeviceInfo>> info(const std::string& name);

    // Suspends `name`: I/O in flight completes, new I/O waits in the kernel until resume()
    // (writes stall instead of failing). No filesystem freeze: a host mount's dirty data would
    // be written at the worst moment. Suspending a suspended device does nothing. ENXIO: no
    // such device.
    Result<void> suspend(const std::string& name);
    // Lets a suspended device's I/O run again; resuming an active device does nothing.
    Result<void> resume(const std::string& name);

    // wrenn's snapshot devices, whichever state dir owns them: name starts with kNamePrefix and
    // the live table's target is `snapshot`, or the UUID starts with kUuidPrefix and no table is
    // live yet (a create cut short between its ioctls by a kill). Tolerates devices vanishing
    // between the list and the per-device query. Callers decide ownership from the UUID.
    Result<std::vector<ListedSnapshot>> list_snapshots();

    Result<SnapshotStatus> snapshot_status(const std::string& name);

    // The major:minor of origin and cow from the live table (for adoption after an agent restart).
    Result<std::pair<std::string, std::string>> snapshot_devices(const std::string& name);

    static std::string device_path(std::string_view name);  // "/dev/mapper/<name>"

    // True when udev creates and removes /dev/mapper nodes; false when libdm (or we) do.
    [[nodiscard]] bool udev_managed() const noexcept { return udev_; }

  private:
    explicit DeviceMapper(bool udev) : udev_(udev) {}

    bool udev_;
};

}  // namespace wrenn::dm
