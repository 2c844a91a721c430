// The one file of loop/ that talks to the kernel: /dev/loop-control, /dev/loopN ioctls, and
// /sys/block/loopN. Facts it depends on are in shared/KERNEL-NOTES.md ("Loop devices").
#include "loop/loop_device.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <thread>
#include <utility>

namespace wrenn::loop {
namespace {

// util-linux gives up after 64 lost races for a free loop; so do we.
constexpr int kMaxAttachAttempts = 64;
// Without udev the node /dev/loopN is made by devtmpfs when LOOP_CTL_GET_FREE adds the device;
// it is normally there at once, but give it up to a second.
constexpr int kNodeWaitTries = 200;
constexpr auto kNodeWaitStep = std::chrono::milliseconds(5);

std::string node_path(int number) {
    return "/dev/loop" + std::to_string(number);
}
std::string sysfs_dir(int number) {
    return "/sys/block/loop" + std::to_string(number);
}

// First line of a sysfs attribute, or nullopt when it cannot be read (e.g. the loop unbound).
std::optional<std::string> read_attribute(const std::string& path) {
    std::ifstream in(path);
    std::string line;
    if (!in || !std::getline(in, line)) {
        return std::nullopt;
    }
    return line;
}

// Opens /dev/loopN, waiting briefly for devtmpfs to create a node that does not exist yet.
// Returns -1 with errno set on failure.
int open_node(int number, int flags) {
    const std::string path = node_path(number);
    for (int i = 0;; ++i) {
        const int fd = ::open(path.c_str(), flags | O_CLOEXEC);
        if (fd >= 0 || errno != ENOENT || i + 1 >= kNodeWaitTries) {
            return fd;
        }
        std::this_thread::sleep_for(kNodeWaitStep);
    }
}

// LOOP_GET_STATUS64; fails with ENXIO when the loop is not bound.
Result<loop_info64> get_status(int fd, const std::string& path) {
    loop_info64 info{};
    if (::ioctl(fd, LOOP_GET_STATUS64, &info) != 0) {
        return Error("read status of " + path + " (LOOP_GET_STATUS64)", errno);
    }
    return info;
}

void set_file_name(loop_info64& info, const std::string& file) {
    // Informational only (losetup shows sysfs backing_file); the kernel keeps 63 bytes.
    const std::size_t n = std::min(file.size(), sizeof info.lo_file_name - 1);
    std::memcpy(info.lo_file_name, file.data(), n);
}

// Pre-5.8 kernels: LOOP_SET_FD then LOOP_SET_STATUS64. Read-only follows from the backing fd's
// mode here. Not atomic: a process killed between the two calls leaves a loop without
// autoclear, which is why LOOP_CONFIGURE is tried first. Returns 0 or an errno.
int configure_legacy(int loop_fd, int backing_fd, const std::string& file, std::uint32_t flags,
                     const std::string& path) {
    if (::ioctl(loop_fd, LOOP_SET_FD, backing_fd) != 0) {
        return errno;
    }
    loop_info64 info{};
    info.lo_flags = flags & LO_FLAGS_AUTOCLEAR;
    set_file_name(info, file);
    if (::ioctl(loop_fd, LOOP_SET_STATUS64, &info) != 0) {
        const int err = errno;
        ::ioctl(loop_fd, LOOP_CLR_FD, 0);
        return err;
    }
    if ((flags & LO_FLAGS_DIRECT_IO) != 0 && ::ioctl(loop_fd, LOOP_SET_DIRECT_IO, 1UL) != 0) {
        spdlog::debug("attach {}: {} refused direct I/O ({}); using buffered I/O", file, path,
                      describe_errno(errno));
    }
    return 0;
}

// Binds loop_fd to backing_fd. Returns 0 or an errno (EBUSY: someone else bound it first).
int configure(int loop_fd, int backing_fd, const std::string& file, std::uint32_t flags,
              const std::string& path) {
    loop_config config{};
    config.fd = static_cast<std::uint32_t>(backing_fd);
    config.block_size = 0;  // the kernel's default, 512
    config.info.lo_flags = flags;
    set_file_name(config.info, file);
    if (::ioctl(loop_fd, LOOP_CONFIGURE, &config) == 0) {
        return 0;
    }
    int err = errno;
    if (err == EINVAL && (flags & LO_FLAGS_DIRECT_IO) != 0) {
        // 6.1 drops direct I/O silently when the file cannot do it; other kernels may refuse.
        // Direct I/O is an optimisation: never fail the attach for it.
        spdlog::debug("attach {}: {} refused direct I/O; retrying with buffered I/O", file, path);
        flags &= ~static_cast<std::uint32_t>(LO_FLAGS_DIRECT_IO);
        config.info.lo_flags = flags;
        if (::ioctl(loop_fd, LOOP_CONFIGURE, &config) == 0) {
            return 0;
        }
        err = errno;
    }
    if (err == EINVAL || err == ENOTTY) {
        spdlog::debug("attach {}: LOOP_CONFIGURE unsupported on {} ({}); using LOOP_SET_FD", file,
                      path, describe_errno(err));
        return configure_legacy(loop_fd, backing_fd, file, flags, path);
    }
    return err;
}

std::optional<int> parse_loop_name(const char* name) {
    if (std::strncmp(name, "loop", 4) != 0 || name[4] == '\0') {
        return std::nullopt;
    }
    int n = 0;
    for (const char* p = name + 4; *p != '\0'; ++p) {
        if (*p < '0' || *p > '9' || n > 100'000'000) {
            return std::nullopt;
        }
        n = n * 10 + (*p - '0');
    }
    return n;
}

}  // namespace

LoopDevice::LoopDevice(UniqueFd fd, int number, dev_t rdev)
    : fd_(std::move(fd)), number_(number), path_(node_path(number)), rdev_(rdev) {}

LoopDevice::LoopDevice(LoopDevice&& other) noexcept
    : fd_(std::move(other.fd_)),
      number_(std::exchange(other.number_, -1)),
      path_(std::move(other.path_)),
      rdev_(std::exchange(other.rdev_, 0)) {
    other.path_.clear();
}

LoopDevice& LoopDevice::operator=(LoopDevice&& other) noexcept {
    if (this != &other) {
        close();
        fd_ = std::move(other.fd_);
        number_ = std::exchange(other.number_, -1);
        path_ = std::move(other.path_);
        other.path_.clear();
        rdev_ = std::exchange(other.rdev_, 0);
    }
    return *this;
}

LoopDevice::~LoopDevice() {
    close();
}

void LoopDevice::close() {
    if (fd_.valid()) {
        spdlog::debug("close {}", path_);
        fd_.reset();
    }
}

Result<LoopDevice> LoopDevice::attach(const std::string& file, const AttachOptions& opts) {
    UniqueFd backing(::open(file.c_str(), (opts.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC));
    if (!backing) {
        return Error("attach " + file + ": open backing file", errno);
    }
    return attach(backing.get(), file, opts);
}

Result<LoopDevice> LoopDevice::attach(int backing_fd, const std::string& file,
                                      const AttachOptions& opts) {
    const std::string action = "attach " + file;
    UniqueFd control(::open("/dev/loop-control", O_RDWR | O_CLOEXEC));
    if (!control) {
        return Error(action + ": open /dev/loop-control", errno);
    }
    std::uint32_t flags = 0;
    if (opts.read_only) {
        flags |= LO_FLAGS_READ_ONLY;
    }
    if (opts.autoclear) {
        flags |= LO_FLAGS_AUTOCLEAR;
    }
    if (opts.direct_io) {
        flags |= LO_FLAGS_DIRECT_IO;
    }
    const int node_flags = opts.read_only ? O_RDONLY : O_RDWR;

    for (int attempt = 1; attempt <= kMaxAttachAttempts; ++attempt) {
        // GET_FREE reserves nothing: another process may bind the same N before we do.
        const int number = ::ioctl(control.get(), LOOP_CTL_GET_FREE);
        if (number < 0) {
            return Error(action + ": find a free loop (LOOP_CTL_GET_FREE)", errno);
        }
        const std::string path = node_path(number);
        UniqueFd loop_fd(open_node(number, node_flags));
        if (!loop_fd) {
            if (errno == ENXIO) {  // removed (LOOP_CTL_REMOVE) since GET_FREE: take another
                spdlog::debug("{}: {} vanished before open (try {}); taking another", action, path,
                              attempt);
                continue;
            }
            return Error(action + ": open " + path, errno);
        }
        const int err = configure(loop_fd.get(), backing_fd, file, flags, path);
        if (err == EBUSY) {
            spdlog::debug("{}: {} was bound by someone else first (try {} of {}); taking another",
                          action, path, attempt, kMaxAttachAttempts);
            continue;
        }
        if (err != 0) {
            return Error(action + ": bind " + path, err);
        }
        struct stat st {};
        if (::fstat(loop_fd.get(), &st) != 0) {
            // Cannot happen on an open fd; the loop still goes with our fd (autoclear).
            return Error(action + ": stat " + path, errno);
        }
        spdlog::debug("{}: bound {} ({}{})", action, path,
                      opts.read_only ? "read-only" : "read-write",
                      opts.autoclear ? ", autoclear" : "");
        LoopDevice loop(std::move(loop_fd), number, st.st_rdev);
        if (opts.direct_io && loop.direct_io()) {
            if (auto proven = loop.prove_direct_io(file); !proven) {
                (void)loop.detach();
                return std::move(proven).error().within(action);
            }
        }
        return loop;
    }
    return Error(action, EBUSY,
                 "every free loop was bound by someone else first, " +
                     std::to_string(kMaxAttachAttempts) + " tries");
}

namespace {

// The numbers of the loops the kernel has (bound or not), from /sys/block, lowest first.
Result<std::vector<int>> loop_numbers(const std::string& action) {
    DIR* dir = ::opendir("/sys/block");
    if (dir == nullptr) {
        return Error(action + ": open /sys/block", errno);
    }
    std::vector<int> numbers;
    while (const dirent* entry = ::readdir(dir)) {
        if (auto n = parse_loop_name(entry->d_name)) {
            numbers.push_back(*n);
        }
    }
    ::closedir(dir);
    std::sort(numbers.begin(), numbers.end());
    return numbers;
}

}  // namespace

Result<std::optional<LoopDevice>> LoopDevice::open_existing(const std::string& file,
                                                            bool read_only) {
    struct stat st {};
    if (::stat(file.c_str(), &st) != 0) {
        return Error("find a loop bound to " + file + ": stat", errno);
    }
    return open_existing(st.st_dev, st.st_ino, file, read_only);
}

Result<std::optional<LoopDevice>> LoopDevice::open_existing(dev_t backing_dev, ino_t backing_ino,
                                                            const std::string& file,
                                                            bool read_only) {
    const std::string action = "find a loop bound to " + file;
    auto numbers = loop_numbers(action);
    if (!numbers) {
        return std::move(numbers).error();
    }
    // Each loop is asked on a descriptor of ours (LOOP_GET_STATUS64), and the first that is bound
    // to exactly this file is the answer: with a thousand sandboxes a thousand CoW loops are
    // bound too, and a listing of each one's status (sysfs reads included) cost seconds.
    // Opened read-only, so that closing a loop that is not the one never makes udev re-probe it.
    auto matches = [&](const loop_info64& info) {
        return info.lo_device == static_cast<std::uint64_t>(backing_dev) &&
               info.lo_inode == static_cast<std::uint64_t>(backing_ino) &&
               ((info.lo_flags & LO_FLAGS_READ_ONLY) != 0) == read_only && info.lo_offset == 0 &&
               info.lo_sizelimit == 0;
    };
    for (const int number : *numbers) {
        const std::string path = node_path(number);
        UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
        if (!fd) {
            if (errno == ENOENT || errno == ENXIO) {
                continue;  // removed since we listed it
            }
            return Error(action + ": open " + path, errno);
        }
        auto info = get_status(fd.get(), path);
        if (!info) {
            if (info.error().code() == ENXIO) {
                continue;  // not bound
            }
            return std::move(info).error().within(action);
        }
        if (!matches(*info)) {
            continue;
        }
        if (!read_only) {
            // The caller writes through it: its own read-write descriptor, checked again (the
            // loop may have been cleared and rebound in between). From now on it keeps it bound.
            fd.reset(::open(path.c_str(), O_RDWR | O_CLOEXEC));
            if (!fd) {
                if (errno == ENOENT || errno == ENXIO) {
                    continue;
                }
                return Error(action + ": open " + path, errno);
            }
            info = get_status(fd.get(), path);
            if (!info) {
                if (info.error().code() == ENXIO) {
                    continue;
                }
                return std::move(info).error().within(action);
            }
            if (!matches(*info)) {
                continue;
            }
        }
        struct stat node {};
        if (::fstat(fd.get(), &node) != 0) {
            return Error(action + ": stat " + path, errno);
        }
        spdlog::debug("{}: reusing {}", action, path);
        return std::optional<LoopDevice>(LoopDevice(std::move(fd), number, node.st_rdev));
    }
    return std::optional<LoopDevice>();
}

namespace {

// The status of loop N, or nullopt when it is not bound (or unbinds while we look).
Result<std::optional<LoopStatus>> status_of(int number, const std::string& action) {
    // /sys/block/loopN/loop exists only while the loop is bound.
    auto backing_file = read_attribute(sysfs_dir(number) + "/loop/backing_file");
    if (!backing_file) {
        return std::optional<LoopStatus>();
    }
    const std::string path = node_path(number);
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) {
        if (errno == ENOENT || errno == ENXIO) {
            return std::optional<LoopStatus>();
        }
        return Error(action + ": open " + path, errno);
    }
    auto info = get_status(fd.get(), path);
    if (!info) {
        if (info.error().code() == ENXIO) {
            return std::optional<LoopStatus>();  // cleared since we read sysfs
        }
        return std::move(info).error().within(action);
    }
    LoopStatus status;
    status.number = number;
    status.device = path;
    // Re-read: the loop may have been rebound between the first read and our open.
    status.backing_file =
        read_attribute(sysfs_dir(number) + "/loop/backing_file").value_or(*backing_file);
    status.backing_dev = static_cast<dev_t>(info->lo_device);
    status.backing_ino = static_cast<ino_t>(info->lo_inode);
    status.read_only = (info->lo_flags & LO_FLAGS_READ_ONLY) != 0;
    status.autoclear = (info->lo_flags & LO_FLAGS_AUTOCLEAR) != 0;
    return std::optional<LoopStatus>(std::move(status));
}

}  // namespace

Result<std::vector<LoopStatus>> LoopDevice::list_bound() {
    const std::string action = "list bound loops";
    auto numbers = loop_numbers(action);
    if (!numbers) {
        return std::move(numbers).error();
    }
    std::vector<LoopStatus> out;
    for (const int number : *numbers) {
        auto status = status_of(number, action);
        if (!status) {
            return std::move(status).error();
        }
        if (*status) {
            out.push_back(std::move(**status));
        }
    }
    return out;
}

Result<std::optional<BackingFile>> LoopDevice::backing_of_device(dev_t device) {
    // /sys/dev/block/MAJ:MIN links to the block device's sysfs folder, named loopN for a loop.
    const std::string link =
        "/sys/dev/block/" + std::to_string(major(device)) + ":" + std::to_string(minor(device));
    char target[PATH_MAX];
    const ssize_t n = ::readlink(link.c_str(), target, sizeof target - 1);
    if (n < 0) {
        if (errno == ENOENT) {
            return std::optional<BackingFile>();  // no such block device (any more)
        }
        return Error("find the loop of " + link, errno);
    }
    target[n] = '\0';
    const char* name = std::strrchr(target, '/');
    auto number = parse_loop_name(name == nullptr ? target : name + 1);
    if (!number) {
        return std::optional<BackingFile>();  // a block device, not a loop
    }
    // The status alone, without status_of's sysfs reads: the kernel answers an unbound loop
    // with ENXIO, and the device and inode are all the caller compares.
    const std::string path = node_path(*number);
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) {
        if (errno == ENOENT || errno == ENXIO) {
            return std::optional<BackingFile>();
        }
        return Error("status of " + path + ": open " + path, errno);
    }
    auto info = get_status(fd.get(), path);
    if (!info) {
        if (info.error().code() == ENXIO) {
            return std::optional<BackingFile>();  // not bound
        }
        return std::move(info).error();
    }
    return std::optional<BackingFile>(
        BackingFile{static_cast<dev_t>(info->lo_device), static_cast<ino_t>(info->lo_inode)});
}

std::uint64_t LoopDevice::size_bytes() const {
    std::uint64_t size = 0;
    if (!fd_ || ::ioctl(fd_.get(), BLKGETSIZE64, &size) != 0) {
        spdlog::warn("size of {}: {}", path_, fd_ ? describe_errno(errno) : "not open");
        return 0;
    }
    return size;
}

bool LoopDevice::direct_io() const {
    if (number_ < 0) {
        return false;
    }
    return read_attribute(sysfs_dir(number_) + "/loop/dio").value_or("0") == "1";
}

Result<void> LoopDevice::set_direct_io(bool on) {
    if (!fd_) {
        return Error("set direct I/O on " + (path_.empty() ? std::string("loop") : path_), EBADF,
                     "not open");
    }
    if (::ioctl(fd_.get(), LOOP_SET_DIRECT_IO, on ? 1UL : 0UL) != 0) {
        return Error(std::string(on ? "turn on" : "turn off") + " direct I/O of " + path_ +
                         " (LOOP_SET_DIRECT_IO)",
                     errno);
    }
    return {};
}

namespace {

// Reads the first block (at most 4 KiB) of a loop node, with O_DIRECT so that the read passes
// the node's own cache and reaches the loop's backing file. Returns 0 or an errno.
int read_first_block(const std::string& node, std::uint64_t size) {
    constexpr std::size_t kBlock = 4096;
    const std::size_t want =
        static_cast<std::size_t>(std::min<std::uint64_t>(kBlock, size)) & ~std::size_t{511};
    if (want == 0) {
        return 0;  // nothing a sector-sized read could reach
    }
    UniqueFd fd(::open(node.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC));
    if (!fd) {
        return errno;
    }
    alignas(kBlock) std::byte buffer[kBlock];
    const ssize_t n = ::pread(fd.get(), buffer, want, 0);
    if (n < 0) {
        return errno;
    }
    return n == static_cast<ssize_t>(want) ? 0 : EIO;
}

}  // namespace

Result<void> LoopDevice::prove_direct_io(const std::string& file) {
    // The kernel takes the flag when the backing file's filesystem claims direct I/O, which is
    // not proof that it works through a loop: over overlayfs on tmpfs (a container's state
    // dir), 6.1 accepts it and then fails every request with an I/O error.
    const std::uint64_t size = size_bytes();
    const int err = read_first_block(path_, size);
    if (err == 0) {
        return {};
    }
    spdlog::warn(
        "attach {}: a direct-I/O read through {} failed ({}): the filesystem under "
        "{} does not do direct I/O through a loop (overlayfs over tmpfs is one); "
        "using buffered I/O for this loop",
        file, path_, describe_errno(err), file);
    if (auto off = set_direct_io(false); !off) {
        return off;
    }
    if (const int again = read_first_block(path_, size); again != 0) {
        return Error("read " + path_ + " with buffered I/O after direct I/O failed", again);
    }
    return {};
}

Result<void> LoopDevice::detach() {
    if (!fd_) {
        return Error("detach " + (path_.empty() ? std::string("loop") : path_), EBADF, "not open");
    }
    if (::ioctl(fd_.get(), LOOP_CLR_FD, 0) != 0) {
        const int err = errno;
        if (err != ENXIO) {
            return Error("detach " + path_ + " (LOOP_CLR_FD)", err);
        }
        // ENXIO: not bound any more (someone else cleared it); what we wanted.
        spdlog::debug("detach {}: already unbound", path_);
    }
    close();
    return success();
}

}  // namespace wrenn::loop
