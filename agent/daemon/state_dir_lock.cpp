#include "agent/daemon/state_dir_lock.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <memory>

namespace wrenn::agent {

namespace {

Result<void> make_dirs(const std::string& path) {
    for (std::size_t pos = 1; pos != std::string::npos;) {
        pos = path.find('/', pos + 1);
        const std::string partial = path.substr(0, pos);
        if (::mkdir(partial.c_str(), 0700) != 0 && errno != EEXIST) {
            return errno_error("create folder " + partial);
        }
    }
    return success();
}

// The pid the holder wrote, or "unknown" (it may be between its open and its write).
std::string holder_pid(int fd) {
    char buf[32] = {};
    const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
    if (n <= 0) {
        return "unknown";
    }
    std::string text(buf, static_cast<std::size_t>(n));
    while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) {
        text.pop_back();
    }
    return text.empty() ? "unknown" : text;
}

}  // namespace

Result<StateDirLock> StateDirLock::acquire(const std::string& state_dir) {
    const std::string path = state_dir + "/" + kFileName;
    const std::string what = "lock state dir " + state_dir;
    if (state_dir.empty() || state_dir[0] != '/') {
        return Error(what, EINVAL, "give an absolute path");
    }
    if (auto made = make_dirs(state_dir); !made) {
        return std::move(made).error().within(what);
    }
    // O_NOFOLLOW: a symlink planted at agent.lock must not make root write a pid elsewhere.
    UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (!fd) {
        return errno_error("open " + path).within(what);
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
        return Error(what, EINVAL, path + " is not a regular file");
    }
    if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
        if (errno == EWOULDBLOCK) {
            return Error(what, EWOULDBLOCK,
                         "another wrenn-agent (pid " + holder_pid(fd.get()) +
                             ") is using it; stop that one first, or give this one its own "
                             "--state-dir");
        }
        return errno_error("flock " + path).within(what);
    }
    const std::string pid = std::to_string(::getpid()) + "\n";
    if (::ftruncate(fd.get(), 0) != 0 ||
        ::pwrite(fd.get(), pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
        return errno_error("write pid to " + path).within(what);
    }
    return StateDirLock(std::move(fd), path);
}

std::string tag_for_canonical_path(const std::string& canonical_path) {
    // FNV-1a, 64 bits: stable across builds and hosts, which std::hash is not promised to be.
    std::uint64_t hash = 0xcbf29ce484222325ull;
    for (const char c : canonical_path) {
        hash ^= static_cast<unsigned char>(c);
        hash *= 0x100000001b3ull;
    }
    char out[17];
    std::snprintf(out, sizeof out, "%016llx", static_cast<unsigned long long>(hash));
    return out;
}

Result<std::string> state_dir_tag(const std::string& state_dir) {
    std::unique_ptr<char, decltype(&std::free)> real(::realpath(state_dir.c_str(), nullptr),
                                                     &std::free);
    if (!real) {
        return errno_error("resolve state dir " + state_dir);
    }
    return tag_for_canonical_path(real.get());
}

}  // namespace wrenn::agent
