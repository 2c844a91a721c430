#include "agent/state/template_image.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

namespace wrenn::agent {

namespace {

std::int64_t nanoseconds(const struct timespec& ts) {
    return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

TemplateIdentity identity_of(const struct stat& st) {
    TemplateIdentity id;
    id.device = static_cast<std::uint64_t>(st.st_dev);
    id.inode = static_cast<std::uint64_t>(st.st_ino);
    id.size_bytes = static_cast<std::uint64_t>(st.st_size);
    id.mtime_ns = nanoseconds(st.st_mtim);
    id.ctime_ns = nanoseconds(st.st_ctim);
    return id;
}

}  // namespace

Result<TemplateImage> open_template(const std::string& path, uid_t owner) {
    const std::string action = "open template " + path;
    // O_NOFOLLOW: a symlink in the templates folder could point the agent, which runs as root,
    // at any file or disk on the host.
    // O_NONBLOCK: a FIFO planted under the name must not hang the open (regular files ignore it).
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
    if (!fd) {
        const int err = errno;
        if (err == ELOOP) {
            return Error(action, ELOOP,
                         "it is a symlink; templates must be regular files in the templates "
                         "folder (copy the image there instead of linking it)");
        }
        return Error(action, err);
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) {
        return Error(action + ": stat", errno);
    }
    if (!S_ISREG(st.st_mode)) {
        return Error(action, EINVAL, "not a regular file");
    }
    if (st.st_uid != owner) {
        return Error(action, EPERM,
                     "owned by uid " + std::to_string(st.st_uid) + ", must be owned by uid " +
                         std::to_string(owner) + " (chown " + std::to_string(owner) + " it)");
    }
    if ((st.st_mode & S_IWOTH) != 0) {
        return Error(action, EPERM, "writable by other users (chmod o-w it)");
    }
    return TemplateImage{std::move(fd), identity_of(st)};
}

Result<TemplateIdentity> inspect_open_template(int fd, const std::string& path) {
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
        return Error("stat template " + path, errno);
    }
    return identity_of(st);
}

Result<TemplateImage> open_template_version(const std::string& path, uid_t owner,
                                            const TemplateIdentity& expected) {
    auto image = open_template(path, owner);
    if (!image) {
        return image;
    }
    if (!image->identity.same_file_state(expected)) {
        return Error("open template " + path, ESTALE,
                     "it is not the version asked for any more (" +
                         image->identity.describe_change_from(expected) + ")");
    }
    return image;
}

}  // namespace wrenn::agent
