#include "agent/transfer/rate_floor.hpp"

namespace wrenn::agent {

RateFloor::RateFloor(std::uint64_t bytes_per_second, std::chrono::milliseconds window)
    : rate_(bytes_per_second), window_(window) {}

bool RateFloor::moved(std::uint64_t bytes, Clock::duration waited) {
    in_window_ += bytes;
    waited_ += waited;
    if (rate_ == 0 || waited_ < window_) {
        return true;
    }
    // The window (or more, if the last wait was long) has ended: judge it over its real length.
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(waited_).count();
    const auto needed = static_cast<long double>(rate_) * static_cast<long double>(ms) / 1000.0L;
    if (static_cast<long double>(in_window_) < needed) {
        return false;
    }
    waited_ = {};
    in_window_ = 0;
    return true;
}

}  // namespace wrenn::agent
