#include "common/error.hpp"

#include <cctype>
#include <cerrno>
#include <cstring>

namespace wrenn {

Error::Error(std::string action, int code, std::string detail)
    : action_(std::move(action)), code_(code), detail_(std::move(detail)) {}

Error Error::within(std::string_view outer_action) const& {
    Error copy = *this;
    return std::move(copy).within(outer_action);
}

Error Error::within(std::string_view outer_action) && {
    action_ = std::string(outer_action) + ": " + action_;
    return std::move(*this);
}

std::string Error::message() const {
    std::string out = action_;
    if (code_ != 0) {
        out += ": ";
        out += describe_errno(code_);
    }
    if (!detail_.empty()) {
        out += code_ != 0 ? " (" : ": ";
        out += detail_;
        if (code_ != 0) {
            out += ")";
        }
    }
    return out;
}

std::string describe_errno(int code) {
    switch (code) {
        case EBUSY:
            return "device busy";
        case ENOENT:
            return "no such file or directory";
        case ENXIO:
            return "no such device";
        case ENODEV:
            return "no such device";
        case EEXIST:
            return "already exists";
        case EACCES:
            // Also a refusal by the agent's own rules (the TCMU allowlist), where "run as
            // root" would mislead; the callers that open root-only nodes add that hint.
            return "permission denied";
        case EPERM:
            return "permission denied (run as root)";
        case ENOSPC:
            return "no space left on device";
        case ETIMEDOUT:
            return "timed out";
        case EINVAL:
            return "invalid argument";
        case EAGAIN:
            return "temporarily unavailable";
        default:
            break;
    }
    char buf[128];
    // GNU strerror_r returns a pointer that may or may not be buf.
    const char* text = strerror_r(code, buf, sizeof buf);
    std::string out = text;
    if (!out.empty()) {
        out[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(out[0])));
    }
    return out;
}

Error errno_error(std::string action) {
    return Error(std::move(action), errno);
}

}  // namespace wrenn
