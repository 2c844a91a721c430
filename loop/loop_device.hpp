#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/result.hpp"
#include "common/unique_fd.hpp"

namespace wrenn::loop {

struct AttachOptions {
    bool read_only = false;
    // Asked for, not promised: the kernel drops it when the backing file cannot do O_DIRECT.
    bool direct_io = false;
    // Detach when the last opener closes, so a killed process cannot leak a loop nothing uses.
    bool autoclear = true;
};

// One bound loop, as read from sysfs and LOOP_GET_STATUS64.
struct LoopStatus {
    int number = -1;
    std::string device;        // "/dev/loop3"
    std::string backing_file;  // full path from /sys/block/loopN/loop/backing_file
    dev_t backing_dev = 0;
    ino_t backing_ino = 0;
    bool read_only = false;
    bool autoclear = false;
};

// An open descriptor (O_CLOEXEC) on a bound /dev/loopN. Move-only. Destroying or close()ing
// drops only our descriptor: an autoclear loop then goes when its last opener closes; detach()
// unbinds explicitly. This is the only file of loop/ that talks to the kernel (loop_device.cpp).
class LoopDevice {
  public:
    // Binds a free loop to `file`. Retries a bounded number of times when another process takes
    // the free loop first (EBUSY). Direct I/O that the kernel refuses is dropped, never fatal.
    static Result<LoopDevice> attach(const std::string& file, const AttachOptions& opts);
    // The same over a file the caller opened (and checked): the loop serves exactly that inode,
    // whatever its path names by now. `file` is for messages.
    static Result<LoopDevice> attach(int backing_fd, const std::string& file,
                                     const AttachOptions& opts);

    // A loop already bound to this file (same st_dev + st_ino, same read-only-ness, no offset or
    // size limit), opened and re-verified after open (it may have been cleared or rebound in
    // between). nullopt if none.
    static Result<std::optional<LoopDevice>> open_existing(const std::string& file, bool read_only);
    // The same for a file known by its device and inode (`file` is for messages).
    static Result<std::optional<LoopDevice>> open_existing(dev_t backing_dev, ino_t backing_ino,
                                                           const std::string& file, bool read_only);

    // Every bound loop. Loops that unbind while we look are left out.
    static Result<std::vector<LoopStatus>> list_bound();

    LoopDevice(LoopDevice&& other) noexcept;
    LoopDevice& operator=(LoopDevice&& other) noexcept;
    LoopDevice(const LoopDevice&) = delete;
    LoopDevice& operator=(const LoopDevice&) = delete;
    ~LoopDevice();

    [[nodiscard]] int number() const { return number_; }
    [[nodiscard]] const std::string& path() const { return path_; }
    [[nodiscard]] dev_t device_number() const { return rdev_; }
    // Current size (BLKGETSIZE64); 0 when it cannot be read (logged).
    [[nodiscard]] std::uint64_t size_bytes() const;
    // Whether the kernel really does direct I/O (/sys/block/loopN/loop/dio).
    [[nodiscard]] bool direct_io() const;
    [[nodiscard]] bool is_open() const { return fd_.valid(); }

    // LOOP_CLR_FD, then drops our descriptor. If others hold the loop open the kernel only marks
    // it autoclear and it goes with its last opener. A loop that is already unbound is success.
    Result<void> detach();
    // Drops our descriptor; with autoclear the loop goes when its last user closes.
    void close();

  private:
    LoopDevice(UniqueFd fd, int number, dev_t rdev);

    UniqueFd fd_;
    int number_ = -1;
    std::string path_;
    dev_t rdev_ = 0;
};

}  // namespace wrenn::loop
