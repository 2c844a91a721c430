#include "common/file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include "common/unique_fd.hpp"

namespace wrenn {

Result<std::string> read_file(const std::string& path, std::size_t limit) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) {
        return errno_error("open " + path);
    }
    return read_file(fd.get(), path, limit);
}

Result<std::string> read_file(int fd, const std::string& what, std::size_t limit) {
    std::string data;
    char buf[8192];
    for (;;) {
        const ssize_t n = ::read(fd, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return errno_error("read " + what);
        }
        if (n == 0) {
            return data;
        }
        data.append(buf, static_cast<std::size_t>(n));
        if (data.size() > limit) {
            return Error("read " + what, EFBIG, "larger than " + std::to_string(limit) + " bytes");
        }
    }
}

}  // namespace wrenn
