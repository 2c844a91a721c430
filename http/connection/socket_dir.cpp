#include "http/connection/socket_dir.hpp"

#include <fcntl.h>
#include <grp.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

namespace wrenn::http {

std::optional<gid_t> find_group(const std::string& name) {
    if (name.empty()) {
        return std::nullopt;
    }
    group grp{};
    group* found = nullptr;
    std::vector<char> buffer(16 * 1024);
    for (;;) {
        const int rc = ::getgrnam_r(name.c_str(), &grp, buffer.data(), buffer.size(), &found);
        if (rc == ERANGE && buffer.size() < (1u << 22)) {
            buffer.resize(buffer.size() * 4);
            continue;
        }
        if (rc != 0 || found == nullptr) {
            return std::nullopt;
        }
        return grp.gr_gid;
    }
}

std::string SocketDir::bind_path() const {
    const std::string via = "/proc/self/fd/" + std::to_string(dir.get()) + "/" + name;
    struct stat proc_st {};
    struct stat dir_st {};
    // The magic link must lead to the very directory we checked.
    if (via.size() < sizeof(sockaddr_un{}.sun_path) &&
        ::stat(("/proc/self/fd/" + std::to_string(dir.get())).c_str(), &proc_st) == 0 &&
        ::fstat(dir.get(), &dir_st) == 0 && proc_st.st_dev == dir_st.st_dev &&
        proc_st.st_ino == dir_st.st_ino) {
        return via;
    }
    return path();
}

Result<SocketDir> open_socket_dir(const std::string& socket_path, const std::string& group_name) {
    const auto slash = socket_path.rfind('/');
    if (socket_path.empty() || socket_path.front() != '/' || slash == std::string::npos ||
        slash + 1 == socket_path.size()) {
        return Error("socket path " + socket_path, EINVAL, "must be an absolute path to a file");
    }
    SocketDir out;
    out.dir_path = slash == 0 ? "/" : socket_path.substr(0, slash);
    out.name = socket_path.substr(slash + 1);
    if (out.name == "." || out.name == "..") {
        return Error("socket path " + socket_path, EINVAL, "must name a file");
    }
    out.group = find_group(group_name);
    const std::string what = "socket directory " + out.dir_path;

    // mkdir() never follows a symlink in its last component: an existing one is EEXIST, and
    // the open below refuses it.
    bool created = false;
    if (::mkdir(out.dir_path.c_str(), 0700) == 0) {
        created = true;
    } else if (errno != EEXIST) {
        const int err = errno;
        return Error("create " + what, err,
                     err == EACCES ? "run as root, or give --listen unix:PATH in a directory "
                                     "this user owns"
                                   : "");
    }
    out.dir =
        UniqueFd(::open(out.dir_path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!out.dir) {
        const int err = errno;
        // With O_DIRECTORY too, a symlink fails as ENOTDIR rather than ELOOP: ask lstat which.
        struct stat link {};
        if (err == ELOOP || (err == ENOTDIR && ::lstat(out.dir_path.c_str(), &link) == 0 &&
                             S_ISLNK(link.st_mode))) {
            return Error(what, ELOOP, "is a symbolic link; refusing to follow it");
        }
        if (err == ENOTDIR) {
            return Error(what, err);
        }
        return Error("open " + what, err);
    }
    struct stat st {};
    if (::fstat(out.dir.get(), &st) != 0) {
        return errno_error("stat " + what);
    }
    const uid_t me = ::geteuid();
    if (st.st_uid != 0 && st.st_uid != me) {
        return Error(what, EPERM,
                     "owned by uid " + std::to_string(st.st_uid) +
                         ", not by root or this user; another user could replace the socket");
    }
    if (created) {
        if (out.group && ::fchown(out.dir.get(), static_cast<uid_t>(-1), *out.group) != 0) {
            return errno_error("chown " + what + " to group " + group_name);
        }
        // Explicit, so the umask cannot widen or narrow it.
        if (::fchmod(out.dir.get(), 0750) != 0) {
            return errno_error("chmod 0750 " + what);
        }
        spdlog::info("http: created {} (0750{})", out.dir_path,
                     out.group ? ", group " + group_name : "");
    } else if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0 && (st.st_mode & S_ISVTX) == 0) {
        return Error(what, EPERM,
                     "is writable by group or others, who could replace the socket; chmod 0750 "
                     "it or choose another directory");
    }
    return out;
}

}  // namespace wrenn::http
