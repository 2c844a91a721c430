#include "agent/template_image.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

#include "common/digest.hpp"

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

Result<std::string> hash_template(const std::string& path, const TemplateImage& image) {
    const std::string action = "compute sha256 of template " + path;
    Sha256 hash;
    std::vector<char> buffer(1 << 20);
    off_t offset = 0;
    for (;;) {
        const ssize_t n = ::pread(image.fd.get(), buffer.data(), buffer.size(), offset);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return Error(action, errno);
        }
        if (n == 0) {
            break;
        }
        hash.update(buffer.data(), static_cast<std::size_t>(n));
        offset += n;
    }
    struct stat st {};
    if (::fstat(image.fd.get(), &st) != 0) {
        return Error(action + ": stat", errno);
    }
    if (!identity_of(st).same_file_state(image.identity) ||
        static_cast<std::uint64_t>(offset) != image.identity.size_bytes) {
        return Error(action, ESTALE, "the image changed while it was read; is it being written?");
    }
    return hash.hex_digest();
}

}  // namespace wrenn::agent
