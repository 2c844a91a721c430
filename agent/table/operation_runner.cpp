#include "agent/table/operation_runner.hpp"

#include <spdlog/spdlog.h>

namespace wrenn::agent {

void OperationRunner::begin() {
    std::lock_guard lock(mu_);
    ++in_flight_;
}

void OperationRunner::end() {
    std::lock_guard lock(mu_);
    if (--in_flight_ == 0) {
        idle_.notify_all();
    }
}

void OperationRunner::report(const std::string& id, const std::string& op,
                             std::chrono::duration<double> took, const Failure* failed) {
    const std::string code = failed == nullptr ? "ok" : std::string(failure_code(failed->kind));
    metrics_.observe(op, took, code);
    if (failed == nullptr) {
        spdlog::info("sandbox={} op={} duration_ms={:.1f} result=ok", id, op, took.count() * 1000);
    } else {
        spdlog::warn("sandbox={} op={} duration_ms={:.1f} result={} error=\"{}\"", id, op,
                     took.count() * 1000, code, failed->error.message());
    }
}

void OperationRunner::post(const EntryPtr& entry, std::function<void(const EntryPtr&)> job) {
    begin();
    on_strand(entry, [this, entry = entry, job = std::move(job)]() mutable {
        job(entry);
        job = nullptr;
        entry.reset();
        end();
    });
}

void OperationRunner::on_strand(const EntryPtr& entry, std::function<void()> job) {
    boost::asio::post(entry->strand, [entry, job = std::move(job)]() mutable {
        if (entry->held_by_transfer) {
            entry->after_transfer.push_back(std::move(job));
            return;
        }
        job();
    });
}

void OperationRunner::release(const EntryPtr& entry) {
    boost::asio::post(entry->strand, [entry] {
        entry->held_by_transfer = false;
        auto waiting = std::move(entry->after_transfer);
        entry->after_transfer.clear();
        for (auto& job : waiting) {
            // A job may start another transfer that holds the entry: the rest wait again, in
            // the same order.
            if (entry->held_by_transfer) {
                entry->after_transfer.push_back(std::move(job));
            } else {
                job();
            }
        }
    });
}

std::optional<Failure> OperationRunner::gone(const EntryPtr& entry, const std::string& op,
                                             const std::string& id) {
    if (!table_.with(entry, [](const Entry& e) { return e.gone; })) {
        return std::nullopt;
    }
    return failure(FailureKind::NotFound, op + " " + id, 0, "no such sandbox");
}

void OperationRunner::wait_idle() {
    std::unique_lock lock(mu_);
    idle_.wait(lock, [this] { return in_flight_ == 0; });
}

bool OperationRunner::wait_idle_for(std::chrono::milliseconds limit) {
    std::unique_lock lock(mu_);
    return idle_.wait_for(lock, limit, [this] { return in_flight_ == 0; });
}

std::size_t OperationRunner::in_flight() const {
    std::lock_guard lock(mu_);
    return in_flight_;
}

}  // namespace wrenn::agent
