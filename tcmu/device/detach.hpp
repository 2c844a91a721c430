#pragma once

// Taking TCMU devices apart in configfs, in the reverse of attach's order, and recovery's sweep
// of the devices the agent left behind. A disk in use is never taken from under its user.

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.hpp"
#include "tcmu/configfs/configfs_ops.hpp"
#include "tcmu/configfs/device_paths.hpp"
#include "tcmu/device/attach_request.hpp"

namespace wrenn::tcmu {

// What detach_unused did.
struct UnusedDetached {
    std::vector<std::string> detached;  // ids
    std::vector<Error> left;            // ours and unused, but could not be detached (in use)
};

// Detaches over `ops` at the places `options` names; both must outlive it.
class Detacher {
  public:
    Detacher(ConfigfsOps& ops, const ConfigfsOptions& options) : ops_(ops), options_(options) {}

    // Removes the LUN link, lun_0, tpgt_1, the loopback target and the core device, in that
    // order. Parts already gone are skipped, so detaching twice (or a half-attached id)
    // succeeds. Refuses (EBUSY) while the disk has holders in sysfs or cannot be opened
    // exclusively (mounted, or held by device-mapper). With `expected`, also refuses (EEXIST)
    // unless the device's dev_config and dev_size are what attach wrote for it
    // (DeviceQueries::check_attached): never detach another's disk.
    Result<void> detach(std::string_view id,
                        const std::optional<DeviceIdentity>& expected = std::nullopt);

    // Recovery's sweep: detaches every device whose serial is owner_serial(tag, id) and whose id
    // is not in `in_use` (the ids the agent holds for its sandboxes). A device with another
    // serial, or none, is never touched; one whose disk has holders or is open exclusively stays
    // (detach refuses it: EBUSY) and is reported in `left`. Each detach is logged. An empty tag
    // touches nothing.
    Result<UnusedDetached> detach_unused(std::string_view tag,
                                         const std::vector<std::string>& in_use);

    // The loopback half of detach (the LUN link, lun_0, tpgt_1 and the target, each only if it
    // is there), for an attach that takes over a core device it finds enabled but not exported.
    // Errors are put within `action`.
    Result<void> remove_loopback_target(std::string_view id, const std::string& action);

  private:
    Result<void> remove_parts(const DevicePaths& paths, bool with_core, const std::string& action);

    ConfigfsOps& ops_;
    const ConfigfsOptions& options_;
};

}  // namespace wrenn::tcmu
