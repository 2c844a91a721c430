#include "http/core/body_pipe.hpp"

#include <sys/socket.h>

#include <cerrno>

namespace wrenn::http {

void BodyStatus::complete() {
    std::lock_guard lock(mu_);
    if (!broken_) {
        complete_ = true;
    }
}

void BodyStatus::broken(Error why) {
    std::lock_guard lock(mu_);
    if (!complete_ && !broken_) {
        broken_ = std::move(why);
    }
}

Result<void> BodyStatus::outcome() const {
    std::lock_guard lock(mu_);
    if (complete_) {
        return success();
    }
    if (broken_) {
        return *broken_;
    }
    return Error("read body", EPIPE, "the writer went away before the end of the body");
}

Result<std::size_t> BodyReader::read(std::span<std::byte> buffer) {
    if (!fd_) {
        return Error("read body", EBADF, "the reader was closed");
    }
    for (;;) {
        const ssize_t n = ::recv(fd_.get(), buffer.data(), buffer.size(), 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            return errno_error("read body");
        }
        if (n == 0 && !buffer.empty()) {
            if (auto ended = status_->outcome(); !ended) {
                return std::move(ended).error();
            }
        }
        return static_cast<std::size_t>(n);
    }
}

BodyWriter::~BodyWriter() {
    if (status_ && fd_) {
        status_->broken(Error("write body", EPIPE, "the writer stopped before the end"));
    }
}

Result<void> BodyWriter::write(std::span<const std::byte> bytes) {
    while (!bytes.empty()) {
        if (!fd_) {
            return Error("write body", EBADF, "the writer was closed");
        }
        const ssize_t n = ::send(fd_.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EPIPE || errno == ECONNRESET)) {
            // ECONNRESET when the reader closed with bytes unread: the same fact.
            return Error("write body", EPIPE,
                         "the reader went away (the client disconnected or the server "
                         "stopped the transfer)");
        }
        if (n < 0) {
            return errno_error("write body");
        }
        bytes = bytes.subspan(static_cast<std::size_t>(n));
    }
    return success();
}

void BodyWriter::finish() {
    status_->complete();
    fd_.reset();
}

void BodyWriter::fail(Error why) {
    status_->broken(std::move(why));
    fd_.reset();
}

Result<BodyPipe> make_body_pipe() {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
        return errno_error("make a body pipe");
    }
    auto status = std::make_shared<BodyStatus>();
    return BodyPipe{BodyReader(UniqueFd(fds[0]), status), BodyWriter(UniqueFd(fds[1]), status)};
}

}  // namespace wrenn::http
