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

namespace {

std::string owner_name(uid_t uid) {
    return uid == 0 ? std::string("root") : "uid " + std::to_string(uid);
}

// A folder on the way to a config: the handler opens the config by its path after the agent has
// checked it, so whoever may write a folder on that path could swap the file in between. Each
// must be owned by `owner_uid` and not writable by group or others.
Result<void> check_folder(int fd, const std::string& shown, uid_t owner_uid,
                          const std::string& action) {
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
        return errno_error(action);
    }
    const std::string why =
        "; every folder from --tcmu-config-dir down to a TCMU config must be owned by " +
        owner_name(owner_uid) +
        " and writable by nobody else, so that the config cannot be swapped between the "
        "agent's check and the handler's open";
    if (st.st_uid != owner_uid) {
        return Error(action, EACCES,
                     "folder " + escape_for_log(shown) + " is owned by uid " +
                         std::to_string(st.st_uid) + why);
    }
    if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
        return Error(action, EACCES,
                     "folder " + escape_for_log(shown) + " has mode " + octal_mode(st.st_mode) +
                         why + ": chmod go-w " + escape_for_log(shown));
    }
    return success();
}

}  // namespace

Result<OpenedConfig> open_config_beneath(const ConfigLocation& location, uid_t owner_uid) {
    const std::string path = location.dir + "/" + location.relative;
    const std::string action = "open TCMU config " + escape_for_log(path);
    // The allowed folder itself is the operator's choice and may be reached through symlinks.
    UniqueFd folder(::open(location.dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!folder) {
        return errno_error("open --tcmu-config-dir " + location.dir).within(action);
    }
    std::string shown = location.dir;
    if (auto checked = check_folder(folder.get(), shown, owner_uid, action); !checked) {
        return std::move(checked).error();
    }
    // Beneath it, one folder at a time, never through a symlink, each checked as it is opened.
    std::size_t pos = 0;
    for (auto slash = location.relative.find('/'); slash != std::string::npos;
         pos = slash + 1, slash = location.relative.find('/', pos)) {
        const std::string part = location.relative.substr(pos, slash - pos);
        UniqueFd next(open_beneath(folder.get(), part, O_PATH | O_DIRECTORY, 0));
        if (!next) {
            return beneath_error(action, errno);
        }
        shown += "/" + part;
        if (auto checked = check_folder(next.get(), shown, owner_uid, action); !checked) {
            return std::move(checked).error();
        }
        folder = std::move(next);
    }
    OpenedConfig out;
    out.dir = std::move(folder);
    out.name = location.relative.substr(pos);
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
        return Error(action, EACCES,
                     "owned by uid " + std::to_string(st.st_uid) +
                         "; a TCMU config must be owned by " + owner_name(owner_uid));
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
