#include "tcmu/configfs/config_file.hpp"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>

namespace wrenn::tcmu {

namespace {

std::string octal_mode(mode_t mode) {
    char text[8];
    std::snprintf(text, sizeof text, "%04o", static_cast<unsigned>(mode & 07777));
    return text;
}

}  // namespace

// openat2(dirfd, relative, how) with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS (Linux 5.6+): the
// kernel refuses ("..", absolute paths and symlinks, magic links included) anything that would
// leave dirfd or pass through a symlink. Where openat2 is missing (ENOSYS), the same is walked
// by hand: each folder opened O_PATH | O_DIRECTORY | O_NOFOLLOW from the one before (a symlink
// there gives ENOTDIR), the last component with O_NOFOLLOW (ELOOP on a symlink). `relative`
// has no "..", "." or empty component (the callers check with origin_policy's rules).
int open_beneath(int dirfd, const std::string& relative, int flags, mode_t mode,
                 Resolver resolver) {
    open_how how{};
    how.flags = static_cast<std::uint64_t>(flags | O_CLOEXEC | O_NOFOLLOW);
    how.mode = (flags & O_CREAT) != 0 ? mode : 0;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    if (resolver == Resolver::openat2) {
        long fd;
        do {
            // EAGAIN: a rename raced the lookup (RESOLVE_BENEATH asks for a retry then).
            fd = ::syscall(SYS_openat2, dirfd, relative.c_str(), &how, sizeof how);
        } while (fd < 0 && (errno == EINTR || errno == EAGAIN));
        if (fd >= 0 || errno != ENOSYS) {
            return static_cast<int>(fd);
        }
    }
    UniqueFd current;
    int at = dirfd;
    std::size_t pos = 0;
    for (;;) {
        const auto slash = relative.find('/', pos);
        const std::string part =
            relative.substr(pos, slash == std::string::npos ? slash : slash - pos);
        if (part.empty() || part == "." || part == "..") {
            errno = EXDEV;
            return -1;
        }
        if (slash == std::string::npos) {
            return ::openat(at, part.c_str(), flags | O_CLOEXEC | O_NOFOLLOW, mode);
        }
        UniqueFd next(::openat(at, part.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!next) {
            return -1;
        }
        current = std::move(next);
        at = current.get();
        pos = slash + 1;
    }
}

Error beneath_error(const std::string& action, int code) {
    switch (code) {
        case ELOOP:
        case EXDEV:
            return Error(action, EACCES,
                         "a symlink on the way or at the end (TCMU configs and their logs are "
                         "opened without following symlinks)");
        case ENOTDIR:
            return Error(action, EACCES,
                         "a component on the way is a symlink or not a folder (symlinks are not "
                         "followed)");
        default:
            return Error(action, code);
    }
}

Result<OpenedConfig> open_config_beneath(const ConfigLocation& location, uid_t owner_uid) {
    const std::string path = location.dir + "/" + location.relative;
    const std::string action = "open TCMU config " + escape_for_log(path);
    // The allowed folder itself is the operator's choice and may be reached through symlinks.
    UniqueFd root(::open(location.dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!root) {
        return errno_error("open --tcmu-config-dir " + location.dir).within(action);
    }
    OpenedConfig out;
    const auto slash = location.relative.rfind('/');
    if (slash == std::string::npos) {
        out.dir = std::move(root);
        out.name = location.relative;
    } else {
        out.dir = UniqueFd(
            open_beneath(root.get(), location.relative.substr(0, slash), O_PATH | O_DIRECTORY, 0));
        if (!out.dir) {
            return beneath_error(action, errno);
        }
        out.name = location.relative.substr(slash + 1);
    }
    // O_NONBLOCK: a FIFO put in place of the config must not hang the worker in open().
    out.file = UniqueFd(open_beneath(out.dir.get(), out.name, O_RDONLY | O_NONBLOCK | O_NOCTTY, 0));
    if (!out.file) {
        return beneath_error(action, errno);
    }
    struct stat st {};
    if (::fstat(out.file.get(), &st) != 0) {
        return errno_error(action);
    }
    if (!S_ISREG(st.st_mode)) {
        return Error(action, EACCES, "not a regular file");
    }
    if (st.st_uid != owner_uid) {
        return Error(
            action, EACCES,
            "owned by uid " + std::to_string(st.st_uid) + "; a TCMU config must be owned by " +
                (owner_uid == 0 ? std::string("root") : "uid " + std::to_string(owner_uid)));
    }
    if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
        return Error(
            action, EACCES,
            "mode " + octal_mode(st.st_mode) + " lets group or others write it; chmod go-w it");
    }
    return out;
}

Result<OpenedConfig> open_allowed_config(const OriginPolicy& policy,
                                         const std::string& config_path) {
    auto location = locate_config(policy, config_path);
    if (!location) {
        return std::move(location).error();
    }
    return open_config_beneath(*location, policy.owner_uid);
}

}  // namespace wrenn::tcmu
