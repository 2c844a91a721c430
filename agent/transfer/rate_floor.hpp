#pragma once

#include <chrono>
#include <cstdint>

namespace wrenn::agent {

// The slowest a transfer may move (--min-transfer-rate): the bytes it moves are counted in
// windows of `window`; a window that ends with fewer than rate x window bytes cuts it. A
// client that sends (or reads) one byte now and then, each within the server's read timeout,
// would otherwise hold a transfer slot for ever. Rate 0: no floor.
class RateFloor {
  public:
    using Clock = std::chrono::steady_clock;

    RateFloor(std::uint64_t bytes_per_second, std::chrono::milliseconds window,
              Clock::time_point start);

    // Counts `bytes` moved by `now`; false once a window has ended below the floor.
    bool moved(std::uint64_t bytes, Clock::time_point now);

    [[nodiscard]] std::uint64_t bytes_per_second() const { return rate_; }
    [[nodiscard]] std::chrono::milliseconds window() const { return window_; }

  private:
    std::uint64_t rate_;
    std::chrono::milliseconds window_;
    Clock::time_point window_start_;
    std::uint64_t in_window_ = 0;
};

}  // namespace wrenn::agent
