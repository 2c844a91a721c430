#include "tcmu/configfs/configfs_ops.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <thread>

#include "common/file.hpp"
#include "common/unique_fd.hpp"

namespace wrenn::tcmu {

namespace {

// ConfigfsOps on the real file system: plain syscalls, fds O_CLOEXEC and closed on every path.
class RealConfigfsOps final : public ConfigfsOps {
  public:
    Result<void> make_dir(const std::string& path) override {
        if (::mkdir(path.c_str(), 0755) != 0) {
            return errno_error("mkdir " + path);
        }
        return success();
    }

    Result<void> remove_dir(const std::string& path) override {
        if (::rmdir(path.c_str()) != 0) {
            return errno_error("rmdir " + path);
        }
        return success();
    }

    Result<void> write_file(const std::string& path, std::string_view value) override {
        // No O_CREAT: configfs attributes exist once their folder does; a missing one is an error.
        UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
        if (!fd) {
            return errno_error("open " + path);
        }
        // configfs takes an attribute's value in one write; a short write is an error, not
        // something to continue (the kernel would parse the rest as a new value).
        ssize_t n;
        do {
            n = ::write(fd.get(), value.data(), value.size());
        } while (n < 0 && errno == EINTR);
        if (n < 0) {
            return errno_error("write " + path);
        }
        if (static_cast<std::size_t>(n) != value.size()) {
            return Error(
                "write " + path, EIO,
                "short write: " + std::to_string(n) + " of " + std::to_string(value.size()));
        }
        return success();
    }

    Result<std::string> read_file(const std::string& path) override {
        return wrenn::read_file(path, 1U << 16);  // configfs and sysfs attributes are small
    }

    Result<void> make_symlink(const std::string& target, const std::string& link) override {
        if (::symlink(target.c_str(), link.c_str()) != 0) {
            return errno_error("symlink " + link + " -> " + target);
        }
        return success();
    }

    Result<void> remove_link(const std::string& path) override {
        if (::unlink(path.c_str()) != 0) {
            return errno_error("unlink " + path);
        }
        return success();
    }

    Result<std::vector<std::string>> list_dir(const std::string& path) override {
        UniqueFd fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        if (!fd) {
            return errno_error("open " + path);
        }
        DIR* dir = ::fdopendir(fd.get());
        if (dir == nullptr) {
            return errno_error("opendir " + path);
        }
        fd.release();  // closedir closes it
        std::vector<std::string> names;
        errno = 0;
        while (const dirent* entry = ::readdir(dir)) {
            std::string_view name = entry->d_name;
            if (name != "." && name != "..") {
                names.emplace_back(name);
            }
        }
        int read_errno = errno;
        ::closedir(dir);
        if (read_errno != 0) {
            return Error("readdir " + path, read_errno);
        }
        std::sort(names.begin(), names.end());
        return names;
    }

    bool exists(const std::string& path) override {
        struct stat st {};
        return ::stat(path.c_str(), &st) == 0;
    }

    Result<void> open_exclusive(const std::string& device) override {
        // O_EXCL on a block device (without O_CREAT) claims it exclusively: the open fails with
        // EBUSY while it is mounted or claimed by another exclusive opener (blkdev_get_by_dev).
        UniqueFd fd(::open(device.c_str(), O_RDONLY | O_EXCL | O_CLOEXEC | O_NONBLOCK));
        if (!fd) {
            return errno_error("open " + device + " exclusively");
        }
        return success();
    }

    Result<void> open_shared(const std::string& device) override {
        UniqueFd fd(::open(device.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
        if (!fd) {
            return errno_error("open " + device);
        }
        return success();
    }

    Result<std::optional<Opener>> char_device_opener(unsigned major, unsigned minor) override {
        const dev_t want = makedev(major, minor);
        UniqueFd proc(::open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        if (!proc) {
            return errno_error("open /proc");
        }
        DIR* pids = ::fdopendir(::dup(proc.get()));
        if (pids == nullptr) {
            return errno_error("list /proc");
        }
        std::optional<Opener> found;
        while (!found) {
            const dirent* entry = ::readdir(pids);
            if (entry == nullptr) {
                break;
            }
            const std::string_view name = entry->d_name;
            if (name.empty() || name.find_first_not_of("0123456789") != std::string_view::npos) {
                continue;
            }
            // A process that exits meanwhile (ENOENT) or that we may not look into is skipped.
            UniqueFd fd_dir(::openat(proc.get(), (std::string(name) + "/fd").c_str(),
                                     O_RDONLY | O_DIRECTORY | O_CLOEXEC));
            if (!fd_dir) {
                continue;
            }
            DIR* fds = ::fdopendir(fd_dir.get());
            if (fds == nullptr) {
                continue;
            }
            fd_dir.release();  // closedir closes it
            while (const dirent* fd_entry = ::readdir(fds)) {
                // stat (not lstat) of /proc/<pid>/fd/<n> is the open file itself: for a device
                // node, its st_rdev, whichever path or mount namespace the process opened it by.
                struct stat st {};
                if (fd_entry->d_name[0] != '.' &&
                    ::fstatat(::dirfd(fds), fd_entry->d_name, &st, 0) == 0 && S_ISCHR(st.st_mode) &&
                    st.st_rdev == want) {
                    Opener opener;
                    std::from_chars(name.data(), name.data() + name.size(), opener.pid);
                    if (auto comm = wrenn::read_file("/proc/" + std::string(name) + "/comm", 64);
                        comm) {
                        opener.command = trim_attribute(*comm);
                    }
                    found = std::move(opener);
                    break;
                }
            }
            ::closedir(fds);
        }
        ::closedir(pids);
        return found;
    }

    std::chrono::steady_clock::time_point now() override {
        return std::chrono::steady_clock::now();
    }

    void sleep_for(std::chrono::milliseconds duration) override {
        std::this_thread::sleep_for(duration);
    }
};

}  // namespace

ConfigfsOps& real_configfs_ops() {
    static RealConfigfsOps ops;
    return ops;
}

std::string trim_attribute(std::string_view text) {
    while (!text.empty() && (text.back() == '\n' || text.back() == '\0' || text.back() == ' ')) {
        text.remove_suffix(1);
    }
    return std::string(text);
}

}  // namespace wrenn::tcmu
