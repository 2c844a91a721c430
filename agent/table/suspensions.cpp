#include "agent/table/suspensions.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>

namespace wrenn::agent {

namespace {

std::size_t index_of(SuspendReason reason) {
    return static_cast<std::size_t>(reason);
}

std::string id_of(SandboxTable& table, const EntryPtr& entry) {
    return table.with(entry, [](const Entry& e) { return e.record.id; });
}

}  // namespace

Suspensions::Suspensions(SandboxTable& table, Platform& platform,
                         std::chrono::milliseconds retry_interval)
    : table_(table),
      platform_(platform),
      retry_interval_(retry_interval),
      retrier_([this] { retry_loop(); }) {}

Suspensions::~Suspensions() {
    stop();
}

void Suspensions::stop() {
    {
        std::lock_guard lock(mu_);
        stopping_ = true;
    }
    wake_.notify_all();
    if (retrier_.joinable()) {
        retrier_.join();
    }
}

Result<void> Suspensions::hold(const EntryPtr& entry, SuspendReason reason) {
    const std::string id = id_of(table_, entry);
    std::lock_guard device(entry->suspend_mu);
    const bool first = !table_.with(entry, [](const Entry& e) { return e.suspended(); });
    if (first) {
        if (auto done = platform_.suspend_snapshot(id); !done) {
            return done;
        }
    }
    table_.with(entry, [reason](Entry& e) { ++e.holds[index_of(reason)]; });
    return success();
}

Result<void> Suspensions::release(const EntryPtr& entry, SuspendReason reason) {
    const std::string id = id_of(table_, entry);
    std::lock_guard device(entry->suspend_mu);
    const bool last = table_.with(entry, [reason](Entry& e) {
        auto& n = e.holds[index_of(reason)];
        if (n == 0) {
            return false;  // not held (the device was removed or made anew meanwhile)
        }
        --n;
        return !e.suspended();
    });
    return last ? resume(entry, id) : success();
}

void Suspensions::adopt(const EntryPtr& entry, SuspendReason reason) {
    table_.with(entry, [reason](Entry& e) { e.holds[index_of(reason)] = 1; });
}

// suspend_mu held. Tried twice at once: a guest's I/O waits while the device is suspended.
Result<void> Suspensions::resume(const EntryPtr& entry, const std::string& id) {
    auto done = platform_.resume_snapshot(id);
    if (!done && done.error().code() != ENXIO) {
        done = platform_.resume_snapshot(id);
    }
    if (done || done.error().code() == ENXIO) {  // ENXIO: the device is gone, nothing waits
        table_.with(entry, [](Entry& e) { e.resume_error.clear(); });
        return success();
    }
    const std::string message = done.error().message() + "; the agent retries it";
    spdlog::error("sandbox={} op=resume-io its device stays suspended: {}", id, message);
    table_.with(entry, [&](Entry& e) { e.resume_error = message; });
    {
        std::lock_guard lock(mu_);
        if (std::find(failed_.begin(), failed_.end(), entry) == failed_.end()) {
            failed_.push_back(entry);
        }
    }
    wake_.notify_all();
    return done;
}

std::size_t Suspensions::failing() const {
    std::lock_guard lock(mu_);
    return failed_.size();
}

void Suspensions::retry_loop() {
    std::unique_lock lock(mu_);
    for (;;) {
        wake_.wait(lock, [this] { return stopping_ || !failed_.empty(); });
        if (wake_.wait_for(lock, retry_interval_, [this] { return stopping_; })) {
            return;
        }
        std::vector<EntryPtr> due = std::move(failed_);
        failed_.clear();
        lock.unlock();
        for (const auto& entry : due) {
            const std::string id = id_of(table_, entry);
            std::lock_guard device(entry->suspend_mu);
            // Someone may hold it again meanwhile, or its device may be gone: then nothing to do.
            const bool still = table_.with(entry, [](const Entry& e) {
                return !e.resume_error.empty() && std::all_of(e.holds.begin(), e.holds.end(),
                                                              [](unsigned n) { return n == 0; });
            });
            if (still && resume(entry, id)) {
                spdlog::info("sandbox={} op=resume-io its device runs again", id);
            }
        }
        lock.lock();
    }
}

}  // namespace wrenn::agent
