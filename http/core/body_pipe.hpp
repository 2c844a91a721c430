#pragma once

// A streamed HTTP body between the server's io_context and a worker thread: a local socket
// pair (a pipe that never raises SIGPIPE: sends use MSG_NOSIGNAL) carries the bytes with the
// kernel's backpressure, and a shared status says how the body ended, so that the reading side
// can tell the end of a complete body from one cut short (client gone, limit, timeout, a
// failed writer). The writing side sets the status before it closes its end.

#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <span>

#include "common/result.hpp"
#include "common/unique_fd.hpp"

namespace wrenn::http {

// How a streamed body ended, as its writing side says; the first word wins.
class BodyStatus {
  public:
    void complete();
    void broken(Error why);
    // At the reader's EOF: ok when the writer said complete, else why it did not (an end
    // without a word is EPIPE: the writer went away).
    [[nodiscard]] Result<void> outcome() const;

  private:
    mutable std::mutex mu_;
    bool complete_ = false;
    std::optional<Error> broken_;
};

// The reading end: blocking reads for a worker thread (the server reads its end of a
// response body asynchronously through release()).
class BodyReader {
  public:
    BodyReader(UniqueFd fd, std::shared_ptr<BodyStatus> status)
        : fd_(std::move(fd)), status_(std::move(status)) {}

    // Up to buffer.size() bytes; 0 only at the end of a complete body; the writer's reason
    // when it stopped short.
    Result<std::size_t> read(std::span<std::byte> buffer);
    // Stops reading: the writer's next write fails (EPIPE), so a worker that has seen enough
    // (say, a refused header) tells the server to stop reading the client's body.
    void close() { fd_.reset(); }

    [[nodiscard]] const std::shared_ptr<BodyStatus>& status() const { return status_; }
    UniqueFd release() { return std::move(fd_); }

  private:
    UniqueFd fd_;
    std::shared_ptr<BodyStatus> status_;
};

// The writing end: blocking writes for a worker thread. finish() says the body is complete;
// destroyed or failed without it, the reader sees the body cut short.
class BodyWriter {
  public:
    BodyWriter(UniqueFd fd, std::shared_ptr<BodyStatus> status)
        : fd_(std::move(fd)), status_(std::move(status)) {}
    ~BodyWriter();
    BodyWriter(BodyWriter&&) noexcept = default;
    BodyWriter& operator=(BodyWriter&&) noexcept = default;

    // All of bytes; EPIPE once the reader is gone.
    Result<void> write(std::span<const std::byte> bytes);
    void finish();
    void fail(Error why);

    [[nodiscard]] const std::shared_ptr<BodyStatus>& status() const { return status_; }
    UniqueFd release() { return std::move(fd_); }

  private:
    UniqueFd fd_;
    std::shared_ptr<BodyStatus> status_;
};

struct BodyPipe {
    BodyReader reader;
    BodyWriter writer;
};

// Both ends, close-on-exec, blocking.
Result<BodyPipe> make_body_pipe();

}  // namespace wrenn::http
