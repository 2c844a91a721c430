#pragma once

// What an attach is asked for, and the part of it that a device keeps in configfs.

#include <cstdint>
#include <optional>
#include <string>

#include "tcmu/configfs/origin_policy.hpp"

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
// back from attrib/ before an attached id is reused or detached. Also the origin by which
// OriginRegistry shares and counts devices.
struct DeviceIdentity {
    std::string handler;
    std::string config_path;
    std::optional<std::uint64_t> size_bytes;

    auto operator<=>(const DeviceIdentity&) const = default;
};

inline DeviceIdentity identity_of(const AttachRequest& req) {
    return DeviceIdentity{req.handler, req.config_path, req.size_bytes};
}

}  // namespace wrenn::tcmu
