#pragma once

// Free space on the state filesystem, where every CoW file grows. CoW files are sparse: when
// the filesystem fills, the loop under a snapshot returns ENOSPC and dm-snapshot invalidates
// the snapshot for good. So the agent refuses new work below --min-free, and below
// --critical-free it suspends the running devices (their writes wait in the kernel instead of
// failing) until space returns above --min-free.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "agent/platform/platform.hpp"
#include "common/result.hpp"

namespace wrenn::agent {

// A free-space threshold: a size, a share of the filesystem, or the larger of both
// ("1GiB,5%"). Zero in both disables it.
struct SpaceThreshold {
    std::uint64_t bytes = 0;
    double percent = 0;

    [[nodiscard]] std::uint64_t resolve(std::uint64_t fs_size_bytes) const;
    [[nodiscard]] bool disabled() const { return bytes == 0 && percent == 0; }
    [[nodiscard]] std::string to_string() const;  // as the command line takes it
};

// "0", "1073741824", "512MiB", "2G", "5%", "1GiB,5%". Units: K, M, G, T with or without "iB"
// (all powers of 1024). Errors say what was wrong with the text.
Result<SpaceThreshold> parse_space_threshold(std::string_view text);

// "1.5 GiB": a byte count for people, in logs and messages.
std::string human_bytes(std::uint64_t bytes);

enum class SpaceLevel {
    Ok,        // at or above --min-free
    Low,       // below --min-free: creates and resumes are refused
    Critical,  // below --critical-free: running devices are suspended
};
std::string_view to_string(SpaceLevel level);

struct SpacePolicy {
    SpaceThreshold min_free{1ull << 30, 5};
    SpaceThreshold critical_free{256ull << 20, 1};
    std::chrono::milliseconds fast_poll{100};  // while below twice --min-free
    std::chrono::milliseconds slow_poll{1000};

    [[nodiscard]] SpaceLevel level(const FreeSpace& space) const;
    [[nodiscard]] std::chrono::milliseconds poll_interval(const FreeSpace& space) const;
    // Empty when the two thresholds make sense together, else why not.
    [[nodiscard]] std::string check() const;
};

// What the watcher does to the sandboxes (the SandboxManager, or a test's fake).
class SpaceActions {
  public:
    virtual ~SpaceActions() = default;
    // Suspends every running device not suspended yet; returns how many it suspended now.
    virtual std::size_t suspend_for_space() = 0;
    // Resumes every device suspended for space; returns how many it resumed.
    virtual std::size_t resume_after_space() = 0;
    // How many devices are suspended for space now.
    [[nodiscard]] virtual std::size_t suspended_for_space() const = 0;
};

// The state filesystem's space at the last look, for /healthz and /metrics.
struct SpaceStatus {
    bool known = false;  // false until the first look, or while statvfs fails
    FreeSpace space;
    std::uint64_t min_free_bytes = 0;
    std::uint64_t critical_free_bytes = 0;
    SpaceLevel level = SpaceLevel::Ok;
    std::size_t suspended = 0;
    std::uint64_t suspensions = 0;  // times the agent went critical and suspended I/O
    std::string error;              // the last statvfs failure, if any
    [[nodiscard]] bool degraded() const { return level != SpaceLevel::Ok || suspended > 0; }
};

class SpaceWatcher;

// Room held on the state filesystem for work in flight (a fork's or an export's copy, an
// import's CoW): counted as used by the watcher's checks until it goes, so that several at once
// cannot together push the filesystem under --min-free. Released when destroyed.
class SpaceReservation {
  public:
    SpaceReservation() = default;
    SpaceReservation(SpaceWatcher* watcher, std::uint64_t bytes)
        : watcher_(watcher), bytes_(bytes) {}
    ~SpaceReservation();
    SpaceReservation(SpaceReservation&& other) noexcept;
    SpaceReservation& operator=(SpaceReservation&& other) noexcept;
    SpaceReservation(const SpaceReservation&) = delete;
    SpaceReservation& operator=(const SpaceReservation&) = delete;

    [[nodiscard]] std::uint64_t bytes() const { return bytes_; }

  private:
    SpaceWatcher* watcher_ = nullptr;
    std::uint64_t bytes_ = 0;
};

// Polls the state filesystem's space on its own thread and acts on the thresholds: below
// critical, suspend_for_space() on every poll (so a device that appears meanwhile is caught
// too); back at or above min-free with devices suspended, resume_after_space(). Between the
// two nothing changes (hysteresis). Each transition is logged. check() and poll_once() may be
// called from any thread.
class SpaceWatcher {
  public:
    SpaceWatcher(Platform& platform, std::string dir, SpacePolicy policy, SpaceActions& actions);
    ~SpaceWatcher();
    SpaceWatcher(const SpaceWatcher&) = delete;
    SpaceWatcher& operator=(const SpaceWatcher&) = delete;

    // The polling thread; stop() or the destructor ends it. With watching off (--min-free 0)
    // there is no thread, and devices suspended by an earlier agent are resumed at once.
    void start();
    void stop();

    // One look and the actions it calls for (the thread calls this; tests call it directly).
    void poll_once();

    // nullopt when there is room for a create or resume now (a fresh statvfs, less what
    // reservations hold), else why not:
    // "12 MiB free on /var/lib/wrenn (100 MiB filesystem), below --min-free 1 GiB".
    [[nodiscard]] std::optional<std::string> refuse_new_work();
    // Holds `bytes` (a transfer's or fork's worst case) for as long as the reservation lives,
    // if free space less every reservation, this one included, stays at or above --min-free;
    // else why not, as refuse_new_work() says it. With watching off, an empty reservation.
    Result<SpaceReservation, std::string> reserve(std::uint64_t bytes);
    [[nodiscard]] std::uint64_t reserved_bytes() const;

    [[nodiscard]] SpaceStatus status() const;
    [[nodiscard]] const SpacePolicy& policy() const { return policy_; }

  private:
    friend class SpaceReservation;
    void run();
    void unreserve(std::uint64_t bytes);

    Platform& platform_;
    std::string dir_;
    SpacePolicy policy_;
    SpaceActions& actions_;

    mutable std::mutex mu_;  // guards status_, stopping_, reserved_
    std::condition_variable wake_;
    SpaceStatus status_;
    std::uint64_t reserved_ = 0;
    bool stopping_ = false;
    std::mutex poll_mu_;  // one poll at a time; guards first_poll_
    bool first_poll_ = true;
    std::thread thread_;
};

}  // namespace wrenn::agent
