#pragma once

#include <boost/asio/post.hpp>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <string>

#include "agent/platform/metrics.hpp"
#include "agent/table/failure.hpp"
#include "agent/table/sandbox_table.hpp"

namespace wrenn::agent {

template <class T>
using Callback = std::function<void(Result<T, Failure>)>;

// Runs operations on their sandbox's strand, one at a time per sandbox, and counts them in
// flight so that a stop can wait for them. Each operation is logged in one line and measured.
class OperationRunner {
  public:
    OperationRunner(SandboxTable& table, Metrics& metrics) : table_(table), metrics_(metrics) {}

    // Runs `fn` on the entry's strand; an entry destroyed meanwhile answers 404 without it.
    // `done` gets the result on the strand.
    template <class T>
    void run(const EntryPtr& entry, std::string op, std::function<Result<T, Failure>()> fn,
             Callback<T> done) {
        begin();
        const std::string id = entry->record.id;
        boost::asio::post(entry->strand, [this, entry = entry, id, op = std::move(op),
                                          fn = std::move(fn), done = std::move(done)]() mutable {
            const auto start = std::chrono::steady_clock::now();
            Result<T, Failure> result =
                table_.with(entry, [](const Entry& e) { return e.gone; })
                    ? Result<T, Failure>(
                          failure(FailureKind::NotFound, op + " " + id, 0, "no such sandbox"))
                    : fn();
            const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
            report(id, op, took, result ? nullptr : &result.error());
            done(std::move(result));
            // Let go of what the operation holds (its entry and its strand among them) before
            // it counts as done: once wait_idle() returns, the manager and the pool may go.
            done = nullptr;
            fn = nullptr;
            entry.reset();
            end();
        });
    }
    // A job of the agent's own on the entry's strand (after the operations queued there),
    // counted in flight but neither logged nor measured.
    void post(const EntryPtr& entry, std::function<void(const EntryPtr&)> job);

    // Blocks until nothing runs (SIGTERM: stop accepting, then drain).
    void wait_idle();
    [[nodiscard]] std::size_t in_flight() const;

  private:
    void begin();
    void end();
    void report(const std::string& id, const std::string& op, std::chrono::duration<double> took,
                const Failure* failed);

    SandboxTable& table_;
    Metrics& metrics_;
    mutable std::mutex mu_;
    std::condition_variable idle_;
    std::size_t in_flight_ = 0;
};

}  // namespace wrenn::agent
