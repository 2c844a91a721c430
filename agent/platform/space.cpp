#include "agent/platform/space.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <utility>

namespace wrenn::agent {

namespace {

Error bad_threshold(std::string_view text, std::string why) {
    return Error("parse space threshold \"" + std::string(text) + "\"", EINVAL,
                 std::move(why) + " (a size such as 2GiB, a share such as 5%, or both: 1GiB,5%)");
}

// "512MiB", "2G", "1073741824".
Result<std::uint64_t> parse_size(std::string_view whole, std::string_view text) {
    std::uint64_t value = 0;
    const char* end = text.data() + text.size();
    auto [ptr, ec] = std::from_chars(text.data(), end, value);
    if (ec != std::errc() || ptr == text.data()) {
        return bad_threshold(whole, "\"" + std::string(text) + "\" is not a number");
    }
    std::string unit(ptr, end);
    for (char& c : unit) {
        c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    }
    int shift = 0;
    if (unit.empty() || unit == "B") {
        shift = 0;
    } else if (unit == "K" || unit == "KIB" || unit == "KB") {
        shift = 10;
    } else if (unit == "M" || unit == "MIB" || unit == "MB") {
        shift = 20;
    } else if (unit == "G" || unit == "GIB" || unit == "GB") {
        shift = 30;
    } else if (unit == "T" || unit == "TIB" || unit == "TB") {
        shift = 40;
    } else {
        return bad_threshold(whole, "unknown unit \"" + std::string(ptr, end) + "\"");
    }
    if (shift > 0 && value > (UINT64_MAX >> shift)) {
        return bad_threshold(whole, "too large");
    }
    return value << shift;
}

Result<double> parse_percent(std::string_view whole, std::string_view text) {
    text.remove_suffix(1);  // the '%'
    double value = 0;
    auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || ptr != text.data() + text.size() || !(value >= 0 && value <= 100)) {
        return bad_threshold(whole, "a share is 0% to 100%");
    }
    return value;
}

std::string percent_text(double percent) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g%%", percent);
    return buf;
}

}  // namespace

std::uint64_t SpaceThreshold::resolve(std::uint64_t fs_size_bytes) const {
    const auto share =
        static_cast<std::uint64_t>(std::ceil(static_cast<double>(fs_size_bytes) * percent / 100));
    return std::max(bytes, share);
}

std::string SpaceThreshold::to_string() const {
    if (disabled()) {
        return "0";
    }
    std::string out;
    if (bytes != 0) {
        out = human_bytes(bytes);
        out.erase(std::remove(out.begin(), out.end(), ' '), out.end());
    }
    if (percent != 0) {
        out += (out.empty() ? "" : ",") + percent_text(percent);
    }
    return out;
}

Result<SpaceThreshold> parse_space_threshold(std::string_view text) {
    SpaceThreshold out;
    if (text.empty()) {
        return bad_threshold(text, "empty");
    }
    bool have_size = false;
    bool have_percent = false;
    std::string_view rest = text;
    for (bool more = true; more;) {
        const std::size_t comma = rest.find(',');
        std::string_view part = rest.substr(0, comma);
        more = comma != std::string_view::npos;
        rest = more ? rest.substr(comma + 1) : std::string_view{};
        if (part.empty()) {
            return bad_threshold(text, "an empty part");
        }
        if (part.back() == '%') {
            if (std::exchange(have_percent, true)) {
                return bad_threshold(text, "two shares");
            }
            auto percent = parse_percent(text, part);
            if (!percent) {
                return std::move(percent).error();
            }
            out.percent = *percent;
        } else {
            if (std::exchange(have_size, true)) {
                return bad_threshold(text, "two sizes");
            }
            auto bytes = parse_size(text, part);
            if (!bytes) {
                return std::move(bytes).error();
            }
            out.bytes = *bytes;
        }
    }
    return out;
}

std::string human_bytes(std::uint64_t bytes) {
    static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    if (bytes < 1024) {
        return std::to_string(bytes) + " B";
    }
    double value = static_cast<double>(bytes);
    std::size_t unit = 0;
    while (value >= 1024 && unit + 1 < std::size(kUnits)) {
        value /= 1024;
        ++unit;
    }
    char buf[32];
    if (value == std::floor(value)) {
        std::snprintf(buf, sizeof buf, "%.0f %s", value, kUnits[unit]);
    } else {
        std::snprintf(buf, sizeof buf, "%.1f %s", value, kUnits[unit]);
    }
    return buf;
}

std::string_view to_string(SpaceLevel level) {
    switch (level) {
        case SpaceLevel::Ok:
            return "ok";
        case SpaceLevel::Low:
            return "low";
        case SpaceLevel::Critical:
            return "critical";
    }
    return "?";
}

SpaceLevel SpacePolicy::level(const FreeSpace& space) const {
    if (space.free_bytes < critical_free.resolve(space.size_bytes)) {
        return SpaceLevel::Critical;
    }
    if (space.free_bytes < min_free.resolve(space.size_bytes)) {
        return SpaceLevel::Low;
    }
    return SpaceLevel::Ok;
}

std::chrono::milliseconds SpacePolicy::poll_interval(const FreeSpace& space) const {
    const std::uint64_t min = min_free.resolve(space.size_bytes);
    return space.free_bytes < min * 2 ? fast_poll : slow_poll;
}

std::string SpacePolicy::check() const {
    if (critical_free.disabled()) {
        return {};
    }
    if (min_free.disabled()) {
        return "--critical-free needs --min-free: without it, suspended sandboxes would never "
               "be resumed";
    }
    // Resolved on both ends of the sizes a filesystem can have, so that the order holds on any.
    for (std::uint64_t fs : {std::uint64_t{0}, std::uint64_t{1} << 50}) {
        if (critical_free.resolve(fs) >= min_free.resolve(fs)) {
            return "--critical-free " + critical_free.to_string() + " must be below --min-free " +
                   min_free.to_string() +
                   " (space between the two is the room sandboxes resume into)";
        }
    }
    return {};
}

SpaceWatcher::SpaceWatcher(Platform& platform, std::string dir, SpacePolicy policy,
                           SpaceActions& actions)
    : platform_(platform), dir_(std::move(dir)), policy_(policy), actions_(actions) {}

SpaceWatcher::~SpaceWatcher() {
    stop();
}

void SpaceWatcher::start() {
    if (policy_.min_free.disabled()) {
        spdlog::warn(
            "free space on {} is not watched (--min-free 0): a full filesystem "
            "invalidates the snapshots writing to it",
            dir_);
        // Nothing will ever resume them otherwise: devices an earlier agent suspended for space.
        if (actions_.suspended_for_space() > 0) {
            spdlog::info("resumed the I/O of {} sandbox(es) an earlier agent suspended for space",
                         actions_.resume_after_space());
        }
        return;
    }
    thread_ = std::thread([this] { run(); });
}

void SpaceWatcher::stop() {
    {
        std::lock_guard lock(mu_);
        stopping_ = true;
    }
    wake_.notify_all();
    if (thread_.joinable()) {
        thread_.join();
    }
}

void SpaceWatcher::run() {
    for (;;) {
        poll_once();
        std::unique_lock lock(mu_);
        const auto interval =
            status_.known ? policy_.poll_interval(status_.space) : policy_.fast_poll;
        if (wake_.wait_for(lock, interval, [this] { return stopping_; })) {
            return;
        }
    }
}

void SpaceWatcher::poll_once() {
    std::lock_guard poll_lock(poll_mu_);
    auto space = platform_.free_space(dir_);
    SpaceStatus before = status();
    if (!space) {
        std::lock_guard lock(mu_);
        if (status_.error != space.error().message()) {
            spdlog::error(
                "cannot read the free space of {}: {}; sandboxes are not suspended "
                "for space while this lasts",
                dir_, space.error().message());
        }
        status_.known = false;
        status_.error = space.error().message();
        return;
    }
    const SpaceLevel level = policy_.level(*space);
    const std::uint64_t min = policy_.min_free.resolve(space->size_bytes);
    const std::uint64_t critical = policy_.critical_free.resolve(space->size_bytes);
    const std::string where = human_bytes(space->free_bytes) + " free on " + dir_;

    if (level != before.level || !before.known) {
        if (level == SpaceLevel::Low) {
            spdlog::warn(
                "{}, below --min-free {}: creates and resumes answer 507 until there "
                "is more",
                where, human_bytes(min));
        } else if (level == SpaceLevel::Critical) {
            spdlog::error(
                "{}, below --critical-free {}: suspending the I/O of running "
                "sandboxes until it is back above --min-free {}; free space there "
                "(destroy sandboxes, remove files)",
                where, human_bytes(critical), human_bytes(min));
        } else if (before.known) {
            spdlog::info("{}, back above --min-free {}", where, human_bytes(min));
        }
    }
    std::size_t suspended_now = 0;
    std::size_t resumed_now = 0;
    const bool first = std::exchange(first_poll_, false);
    if (level == SpaceLevel::Critical) {
        suspended_now = actions_.suspend_for_space();
    } else if ((level == SpaceLevel::Ok || first) && actions_.suspended_for_space() > 0) {
        // At the first look, above critical is enough: a device found suspended at start may
        // have been held by a fork that a kill cut short, not by the lack of space.
        resumed_now = actions_.resume_after_space();
        spdlog::info("{}: resumed the I/O of {} sandbox(es)", where, resumed_now);
    }
    if (suspended_now > 0) {
        spdlog::warn("{}: suspended the I/O of {} sandbox(es)", where, suspended_now);
    }
    const std::size_t suspended = actions_.suspended_for_space();
    std::lock_guard lock(mu_);
    if (level == SpaceLevel::Critical && before.level != SpaceLevel::Critical) {
        ++status_.suspensions;
    }
    status_.known = true;
    status_.error.clear();
    status_.space = *space;
    status_.min_free_bytes = min;
    status_.critical_free_bytes = critical;
    status_.level = level;
    status_.suspended = suspended;
}

std::optional<std::string> SpaceWatcher::refuse_new_work() {
    auto reserved = reserve(0);
    return reserved ? std::nullopt : std::optional<std::string>(std::move(reserved).error());
}

Result<SpaceReservation, std::string> SpaceWatcher::reserve(std::uint64_t bytes) {
    if (policy_.min_free.disabled()) {
        return SpaceReservation{};
    }
    auto space = platform_.free_space(dir_);
    if (!space) {
        // Not knowing is no reason to refuse: the watcher logs the failure.
        return SpaceReservation{};
    }
    const std::uint64_t min = policy_.min_free.resolve(space->size_bytes);
    std::lock_guard lock(mu_);
    const std::uint64_t held = reserved_;
    const std::uint64_t left = space->free_bytes > held ? space->free_bytes - held : 0;
    if (left >= min && left - min >= bytes) {
        reserved_ += bytes;
        return SpaceReservation(this, bytes);
    }
    std::string why = human_bytes(space->free_bytes) + " free on " + dir_ + " (" +
                      human_bytes(space->size_bytes) + " filesystem)";
    if (held == 0 && bytes == 0) {
        why += ", below --min-free " + human_bytes(min);
    } else {
        if (held > 0) {
            why += ", " + human_bytes(held) + " of it held for transfers and forks in flight";
        }
        if (bytes > 0) {
            why += ", and this one may need " + human_bytes(bytes);
        }
        why += ": that would leave less than --min-free " + human_bytes(min);
    }
    return why + "; free space there (destroy sandboxes, remove files) and retry";
}

std::uint64_t SpaceWatcher::reserved_bytes() const {
    std::lock_guard lock(mu_);
    return reserved_;
}

void SpaceWatcher::unreserve(std::uint64_t bytes) {
    std::lock_guard lock(mu_);
    reserved_ -= bytes;
}

SpaceReservation::~SpaceReservation() {
    if (watcher_ != nullptr && bytes_ > 0) {
        watcher_->unreserve(bytes_);
    }
}

SpaceReservation::SpaceReservation(SpaceReservation&& other) noexcept
    : watcher_(std::exchange(other.watcher_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

SpaceReservation& SpaceReservation::operator=(SpaceReservation&& other) noexcept {
    if (this != &other) {
        if (watcher_ != nullptr && bytes_ > 0) {
            watcher_->unreserve(bytes_);
        }
        watcher_ = std::exchange(other.watcher_, nullptr);
        bytes_ = std::exchange(other.bytes_, 0);
    }
    return *this;
}

SpaceStatus SpaceWatcher::status() const {
    SpaceStatus out;
    {
        std::lock_guard lock(mu_);
        out = status_;
    }
    out.suspended = actions_.suspended_for_space();  // outside our lock: it takes the manager's
    return out;
}

}  // namespace wrenn::agent
