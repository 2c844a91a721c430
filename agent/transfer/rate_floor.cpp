#include "agent/transfer/rate_floor.hpp"

namespace wrenn::agent {

RateFloor::RateFloor(std::uint64_t bytes_per_second, std::chrono::milliseconds window,
                     Clock::time_point start)
    : rate_(bytes_per_second), window_(window), window_start_(start) {}

bool RateFloor::moved(std::uint64_t bytes, Clock::time_point now) {
    in_window_ += bytes;
    if (rate_ == 0 || now - window_start_ < window_) {
        return true;
    }
    // The window (or more, if the last wait was long) has ended: judge it over its real length.
    const auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(now - window_start_);
    const auto needed =
        static_cast<long double>(rate_) * static_cast<long double>(elapsed.count()) / 1000.0L;
    if (static_cast<long double>(in_window_) < needed) {
        return false;
    }
    window_start_ = now;
    in_window_ = 0;
    return true;
}

}  // namespace wrenn::agent
