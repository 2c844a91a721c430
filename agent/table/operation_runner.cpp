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
    boost::asio::post(entry->strand, [this, entry = entry, job = std::move(job)]() mutable {
        job(entry);
        job = nullptr;
        entry.reset();
        end();
    });
}

void OperationRunner::wait_idle() {
    std::unique_lock lock(mu_);
    idle_.wait(lock, [this] { return in_flight_ == 0; });
}

std::size_t OperationRunner::in_flight() const {
    std::lock_guard lock(mu_);
    return in_flight_;
}

}  // namespace wrenn::agent
