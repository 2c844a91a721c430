#pragma once

// The file operations that TCMU attach and detach need, by path: configfs writes and reads,
// sysfs reads, /dev opens and a look through /proc. configfs_ops.cpp is the only code in
// wrenn-agent that writes to configfs; everything else in tcmu/ goes through ConfigfsOps, so that
// tests can run it over a fake.

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.hpp"

namespace wrenn::tcmu {

// Each operation fails with the errno it got. The real implementation (real_configfs_ops) calls
// the kernel; tests inject a fake that records calls. Time is here too so that a fake can make
// retries and waits instantaneous.
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

// An attribute's value without the newline (and NULs, spaces) the kernel ends it with.
std::string trim_attribute(std::string_view text);

}  // namespace wrenn::tcmu
