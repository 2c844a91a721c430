#pragma once

#include <chrono>
#include <cstdint>

namespace wrenn::agent {

// The slowest a client may move a transfer (--min-transfer-rate). Only the time spent waiting
// on the client counts (a read of the upload, a write of the download), not the agent's own
// work between: a compressed export of mostly zeros writes little while it reads much, and is
// not the client's fault. Each window of `window` of waiting must have moved rate x window
// bytes, else the transfer is cut: a client that sends (or reads) one byte now and then, each
// within the server's read timeout, would otherwise hold a transfer slot for ever. Rate 0: no
// floor.
class RateFloor {
  public:
    using Clock = std::chrono::steady_clock;

    RateFloor(std::uint64_t bytes_per_second, std::chrono::milliseconds window);

    // Counts `bytes` moved by one wait on the client that took `waited`; false once a window
    // of waiting has ended below the floor.
    bool moved(std::uint64_t bytes, Clock::duration waited);

    [[nodiscard]] std::uint64_t bytes_per_second() const { return rate_; }
    [[nodiscard]] std::chrono::milliseconds window() const { return window_; }

  private:
    std::uint64_t rate_;
    std::chrono::milliseconds window_;
    Clock::duration waited_{};  // in this window
    std::uint64_t in_window_ = 0;
};

}  // namespace wrenn::agent
