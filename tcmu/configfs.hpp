#pragma once

// TCMU block devices through configfs, as overlaybd-attacher makes them: tcmu::Configfs is the
// one object callers use. It is a thin façade over the parts, each with its own header:
//   configfs_ops    the kernel side, the only code that writes configfs (ConfigfsOps)
//   attach          the attach sequence (Attacher, judge_existing), with attach_waits
//   attach_log      the log of an attach and overlaybd's result file
//   detach          detach and recovery's sweep (Detacher)
//   queries         what configfs and sysfs say about a device (DeviceQueries)
// config_file opens backstore configs beneath an allowed folder; origin_registry shares and
// counts the devices of the agent's sandboxes.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.hpp"
#include "tcmu/configfs/configfs_ops.hpp"
#include "tcmu/configfs/device_paths.hpp"
#include "tcmu/device/attach.hpp"
#include "tcmu/device/attach_request.hpp"
#include "tcmu/device/detach.hpp"
#include "tcmu/device/queries.hpp"

namespace wrenn::tcmu {

// The TCMU devices under one configfs (and its sysfs and /dev), over a ConfigfsOps: the kernel's
// by default, a fake in tests. Holds only the options and a reference to the ops, which must
// outlive it; cheap to copy. Each method is documented where its part declares it.
class Configfs {
  public:
    explicit Configfs(ConfigfsOptions options = {});
    Configfs(ConfigfsOps& ops, ConfigfsOptions options);

    // Attacher::attach: "/dev/sdX", never without the disk.
    Result<std::string> attach(const AttachRequest& req);
    // Detacher::detach: reverse order, idempotent, refuses a disk in use (EBUSY) and, with
    // `expected`, a device attached for another origin (EEXIST).
    Result<void> detach(std::string_view id,
                        const std::optional<DeviceIdentity>& expected = std::nullopt);
    // Detacher::detach_unused: recovery's sweep of our devices that no sandbox holds.
    Result<UnusedDetached> detach_unused(std::string_view tag,
                                         const std::vector<std::string>& in_use);

    // DeviceQueries: read only.
    Result<std::optional<std::string>> find_attached(std::string_view id) const;
    Result<std::vector<std::string>> list_attached() const;
    Result<std::string> attached_config(std::string_view id) const;
    Result<std::string> attached_serial(std::string_view id) const;
    Result<void> check_attached(std::string_view id, const DeviceIdentity& expected) const;
    Result<ExistingDevice> inspect_existing(std::string_view id) const;
    Result<std::uint64_t> disk_size(const std::string& disk) const;

    [[nodiscard]] const ConfigfsOptions& options() const { return options_; }

  private:
    [[nodiscard]] DeviceQueries queries() const { return DeviceQueries(*ops_, options_); }

    ConfigfsOps* ops_;
    ConfigfsOptions options_;
};

}  // namespace wrenn::tcmu
