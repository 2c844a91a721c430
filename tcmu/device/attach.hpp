#pragma once

// The attach sequence, in the order overlaybd-attacher uses: a core device under
// target/core/user_999999999, a tcm_loop target that exports it as a SCSI disk, and the wait for
// that disk's /dev/sdX.

#include <string>

#include "common/result.hpp"
#include "tcmu/configfs/configfs_ops.hpp"
#include "tcmu/configfs/device_paths.hpp"
#include "tcmu/device/attach_request.hpp"
#include "tcmu/device/queries.hpp"

namespace wrenn::tcmu {

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

// Attaches over `ops` at the places `options` names; both must outlive it.
class Attacher {
  public:
    Attacher(ConfigfsOps& ops, const ConfigfsOptions& options) : ops_(ops), options_(options) {}

    // Core device, its serial (when the request has one), control (dev_config,
    // max_data_area_mb, dev_size), enable (bounded EAGAIN retry), attrib/cmd_time_out, the wait
    // (options.handler_wait) for a userspace handler to open the device's UIO node, loopback
    // <wwn>/tpgt_1/lun/lun_0, nexus, LUN symlink, read tpgt_1/address, wait (bounded) for
    // /sys/class/scsi_device/<H:C:T>:0/device/block/sdX. Returns "/dev/sdX"; never succeeds
    // without the disk. A failed try removes what it created; the whole attach is tried
    // options.attempts times, except when no handler took the device (ETIMEDOUT, naming the
    // handler and the backstore to start) or the id is taken. An id taken by a half-made device
    // of this same request (judge_existing: HalfMade), left by an attach that was killed, is
    // logged and then taken over where it stopped when it is enabled but not exported (its
    // handler may still be acting on its announcement: removing and remaking it at once
    // confuses tcmu-runner), else detached and made again. Appends a log of what it did (and why
    // it failed) to the config's result file (AttachLog::append_to_result_file).
    Result<std::string> attach(const AttachRequest& req);

  private:
    ConfigfsOps& ops_;
    const ConfigfsOptions& options_;
};

}  // namespace wrenn::tcmu
