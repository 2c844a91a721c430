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

// Which loops do direct I/O, decided here and nowhere else.
// - A template's loop is shared by every sandbox made over it: buffered, so one page cache of
//   the template file serves them all. Measured in the VM (scripts/bench-density): 8 and 32
//   sandboxes over one template, each read whole with O_DIRECT after dropping caches, read
//   8.00 and 32.00 times the template's size from the disk with direct I/O on its loop, and
//   as much again on a warm second round; buffered, 1.00 times cold and 0.00 warm.
// - A CoW loop carries one sandbox's private data, which nothing else reads: direct, so it is
//   not cached a second time under the sandbox's own device.
inline constexpr AttachOptions kTemplateLoop{.read_only = true, .direct_io = false};
inline constexpr AttachOptions kCowLoop{.read_only = false, .direct_io = true};

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

// The file a bound loop reads and writes, by its device and inode.
struct BackingFile {
    dev_t dev = 0;
    ino_t ino = 0;
};

// An open descriptor (O_CLOEXEC) on a bound /dev/loopN. Move-only. Destroying or close()ing
// drops only our descriptor: an autoclear loop then goes when its last opener closes; detach()
// unbinds explicitly. This is the only file of loop/ that talks to the kernel (loop_device.cpp).
class LoopDevice {
  public:
    // Binds a free loop to `file`. Retries a bounded number of times when another process takes
    // the free loop first (EBUSY). Direct I/O that the kernel refuses is dropped, never fatal;
    // direct I/O that the kernel accepts is proven by a read of the first block, and the loop
    // is switched to buffered I/O (with a warning that says why) when that read fails.
    static Result<LoopDevice> attach(const std::string& file, const AttachOptions& opts);
    // The same over a file the caller opened (and checked): the loop serves exactly that inode,
    // whatever its path names by now. `file` is for messages.
    static Result<LoopDevice> attach(int backing_fd, const std::string& file,
                                     const AttachOptions& opts);

    // The lowest-numbered loop bound to this file (same st_dev + st_ino, same read-only-ness, no
    // offset or size limit), checked on the descriptor returned (so it cannot have been cleared
    // or rebound in between). Stops at the first match. nullopt if none.
    static Result<std::optional<LoopDevice>> open_existing(const std::string& file, bool read_only);
    // The same for a file known by its device and inode (`file` is for messages).
    static Result<std::optional<LoopDevice>> open_existing(dev_t backing_dev, ino_t backing_ino,
                                                           const std::string& file, bool read_only);

    // Every bound loop. Loops that unbind while we look are left out.
    static Result<std::vector<LoopStatus>> list_bound();
    // The file that the loop whose block device number is `device` is bound to; nullopt when
    // that device is not a bound loop. One readlink and one LOOP_GET_STATUS64: recovery asks
    // this once per sandbox.
    static Result<std::optional<BackingFile>> backing_of_device(dev_t device);

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
    // LOOP_SET_DIRECT_IO on a bound loop, in use or not (the kernel freezes its queue for the
    // switch). Turning it on is a request the kernel may drop, as at attach.
    Result<void> set_direct_io(bool on);
    [[nodiscard]] bool is_open() const { return fd_.valid(); }

    // LOOP_CLR_FD, then drops our descriptor. If others hold the loop open the kernel only marks
    // it autoclear and it goes with its last opener. A loop that is already unbound is success.
    Result<void> detach();
    // Drops our descriptor; with autoclear the loop goes when its last user closes.
    void close();

  private:
    LoopDevice(UniqueFd fd, int number, dev_t rdev);
    // After attach with direct I/O on: reads the first block with O_DIRECT; on failure turns
    // direct I/O off and reads it again. An error only when the buffered read fails too.
    Result<void> prove_direct_io(const std::string& file);

    UniqueFd fd_;
    int number_ = -1;
    std::string path_;
    dev_t rdev_ = 0;
};

}  // namespace wrenn::loop
