#pragma once

#include <array>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "agent/platform/platform.hpp"
#include "agent/table/sandbox_table.hpp"
#include "common/result.hpp"

namespace wrenn::agent {

// The one owner of suspend and resume for sandboxes' devices. Fork and export (on the sandbox's
// strand) and the space watcher (off it) each hold a device suspended for their reason; the
// device is suspended when the first holder comes and resumed only when the last lets go, so
// that no holder's resume lets another's suspension go (a fork's copy stays a point in time;
// space stays protected). A resume that fails is retried at once, then every
// `retry_interval` in the background until it succeeds or the device is gone; meanwhile reads
// show the error (Entry::resume_error) and healthz is degraded.
class Suspensions {
  public:
    Suspensions(SandboxTable& table, Platform& platform,
                std::chrono::milliseconds retry_interval = std::chrono::seconds(1));
    ~Suspensions();
    Suspensions(const Suspensions&) = delete;
    Suspensions& operator=(const Suspensions&) = delete;

    // Holds the entry's device suspended for `reason`, suspending it if nobody held it. On an
    // error (ENXIO: no such device) nothing is held.
    Result<void> hold(const EntryPtr& entry, SuspendReason reason);
    // Lets go of one hold for `reason`; the last holder resumes the device. An error is a resume
    // that failed twice: the device stays suspended, and the background retries it.
    Result<void> release(const EntryPtr& entry, SuspendReason reason);
    // Recovery: a device found suspended at start, taken as held for `reason` (no kernel call).
    void adopt(const EntryPtr& entry, SuspendReason reason);
    // Sandboxes whose device's resume failed and is being retried.
    [[nodiscard]] std::size_t failing() const;

    // Stops the background retries (shutdown).
    void stop();

  private:
    Result<void> resume(const EntryPtr& entry, const std::string& id);
    void retry_loop();

    SandboxTable& table_;
    Platform& platform_;
    std::chrono::milliseconds retry_interval_;

    mutable std::mutex mu_;  // guards the fields below (each device's calls: Entry::suspend_mu)
    std::condition_variable wake_;
    std::vector<EntryPtr> failed_;  // resumes to retry
    bool stopping_ = false;
    std::thread retrier_;
};

}  // namespace wrenn::agent
