#pragma once

// What configfs and sysfs say about TCMU devices: which ids exist, what each was attached for,
// whether its disk is there. Reads only; nothing here changes a device.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.hpp"
#include "tcmu/configfs/configfs_ops.hpp"
#include "tcmu/configfs/device_paths.hpp"
#include "tcmu/device/attach_request.hpp"

namespace wrenn::tcmu {

// What attach finds at an id whose core device already exists, read from configfs.
struct ExistingDevice {
    std::string dev_config;      // attrib/dev_config, trimmed; "" when never written
    std::uint64_t dev_size = 0;  // attrib/dev_size; 0 when never written
    std::string serial;          // wwn/vpd_unit_serial's value; "" when never written
    bool enabled = false;        // enable reads 1
    bool exported = false;       // the LUN link exists
    bool disk = false;           // and its /dev/sdX
};

// The queries over `ops` at the places `options` names; both must outlive it. Every id is
// checked (is_valid_id) before a path is formed from it: EINVAL otherwise.
class DeviceQueries {
  public:
    DeviceQueries(ConfigfsOps& ops, const ConfigfsOptions& options)
        : ops_(ops), options_(options) {}

    // "/dev/sdX" when the id's core device, loopback target and disk all exist; nullopt otherwise.
    Result<std::optional<std::string>> find_attached(std::string_view id) const;
    // Ids of the dev_<id> folders under user_999999999 (valid ids only), sorted.
    Result<std::vector<std::string>> list_attached() const;
    // The config path the device was attached with, from its attrib/dev_config (for adoption).
    Result<std::string> attached_config(std::string_view id) const;
    // The serial in the id's wwn/vpd_unit_serial ("" when none was written).
    Result<std::string> attached_serial(std::string_view id) const;
    // Reads the id's attrib/dev_config (and attrib/dev_size when `expected` sets a size) and
    // errors (EEXIST, naming both values) unless they are what attach writes for `expected`.
    // ENOENT when the device does not exist.
    Result<void> check_attached(std::string_view id, const DeviceIdentity& expected) const;
    // Reads an existing id's ExistingDevice from configfs (ENOENT when there is no such device).
    Result<ExistingDevice> inspect_existing(std::string_view id) const;
    // A disk's size in bytes, from <sys>/class/block/<name>/size (512-byte sectors).
    Result<std::uint64_t> disk_size(const std::string& disk) const;

  private:
    ConfigfsOps& ops_;
    const ConfigfsOptions& options_;
};

}  // namespace wrenn::tcmu
