#pragma once

// Where a TCMU device's files are (configfs, sysfs, /dev), and how long attach waits for each of
// its steps: the settings of a Configfs and of the parts beneath it.

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include "common/error.hpp"
#include "tcmu/configfs/configfs_ops.hpp"

namespace wrenn::tcmu {

struct ConfigfsOptions {
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

// The configfs paths of one id (see naming.hpp for their names).
struct DevicePaths {
    std::string hba, core, control, enable, cmd_time_out, dev_config, dev_size, serial,
        nl_reply_supported;
    std::string loopback, target, tpg, lun, link, nexus, address;

    DevicePaths(std::string_view id, const ConfigfsOptions& options);
};

// <sys>/class/scsi_device/<H:C:T>:0/device/block: where the disk of a LUN appears.
std::string block_dir_for(const ConfigfsOptions& options, const std::string& scsi_address);

// The "sdX" of an id's LUN from sysfs, if its target has an address and the disk is there.
std::optional<std::string> disk_name(ConfigfsOps& ops, const DevicePaths& paths,
                                     const ConfigfsOptions& options);

// EINVAL for an id that is not 1 to 13 decimal digits, as "<action> <id>".
Error invalid_id(std::string_view action, std::string_view id);

}  // namespace wrenn::tcmu
