#pragma once

// The two waits of an attach, each bounded: for a userspace handler to take the device after
// enable, and for the SCSI disk to appear after the LUN is linked.

#include <string>

#include "common/result.hpp"
#include "tcmu/configfs/configfs_ops.hpp"
#include "tcmu/configfs/device_paths.hpp"
#include "tcmu/device/attach_log.hpp"

namespace wrenn::tcmu {

// Waits (options.handler_wait) until a userspace handler holds the UIO node of the core device
// `dev_name` open, and still holds it options.handler_settle later. The handler (tcmu-runner,
// overlaybd-tcmu) opens the node when the kernel announces the device, or in its startup scan;
// tcmu_open lets only one opener in, so we look at /proc instead of opening it. The node is
// the one tcmu_configure_device registers during the enable write, named
// "tcm-user/<hba>/<device>/<dev_config>". ETIMEDOUT, naming `handler_name` and the backstore to
// start, when none took it.
Result<void> wait_for_handler(ConfigfsOps& ops, const ConfigfsOptions& options,
                              const std::string& handler_name, const std::string& dev_name,
                              AttachLog& log);

// Polls for <sys>/class/scsi_device/<H:C:T>:0/device/block/<sdX> and <dev>/<sdX>, up to
// options.disk_wait, and returns "<dev>/sdX" once it can be opened. tcm_loop scans the LUN when
// it is linked, but the disk node may lag behind its sysfs entry. ETIMEDOUT, asking whether the
// backstore runs, when no disk came.
Result<std::string> wait_for_disk(ConfigfsOps& ops, const ConfigfsOptions& options,
                                  const std::string& scsi_address, AttachLog& log);

}  // namespace wrenn::tcmu
