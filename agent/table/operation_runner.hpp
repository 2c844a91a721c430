#pragma once

#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
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
        on_strand(entry, [this, entry = entry, id, op = std::move(op), fn = std::move(fn),
                          done = std::move(done)]() mutable {
            const auto start = std::chrono::steady_clock::now();
            auto missing = gone(entry, op, id);
            Result<T, Failure> result = missing ? Result<T, Failure>(*missing) : fn();
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

    // What a transfer's first step hands to its second: `value`, and whether the entry stays
    // held while the second runs (a paused sandbox's CoW must not change under its export).
    template <class P>
    struct Prepared {
        std::shared_ptr<P> value;
        bool hold = false;
    };

    // A transfer: `prepare` on the entry's strand (checks, a point-in-time copy), then `stream`
    // on `pool`, where it may block on a slow client without taking a worker. When prepare asks
    // for it, the entry stays held until stream returns: its other operations wait, in order,
    // holding no thread. One log line and one measurement for the whole.
    template <class T, class P>
    void run_transfer(const EntryPtr& entry, std::string op, boost::asio::thread_pool& pool,
                      std::function<Result<Prepared<P>, Failure>()> prepare,
                      std::function<Result<T, Failure>(P&)> stream, Callback<T> done) {
        begin();
        const std::string id = entry->record.id;
        const auto start = std::chrono::steady_clock::now();
        auto finish = [this, id, op, start, done = std::move(done)](Result<T, Failure> result) {
            const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
            report(id, op, took, result ? nullptr : &result.error());
            done(std::move(result));
            end();
        };
        on_strand(entry, [this, entry, id, op, &pool, prepare = std::move(prepare),
                          stream = std::move(stream), finish = std::move(finish)] {
            if (auto missing = gone(entry, op, id)) {
                finish(*missing);
                return;
            }
            auto prepared = prepare();
            if (!prepared) {
                finish(std::move(prepared).error());
                return;
            }
            const bool hold = prepared->hold;
            entry->held_by_transfer = hold;
            boost::asio::post(pool, [this, entry, hold, value = std::move(prepared->value), stream,
                                     finish]() mutable {
                Result<T, Failure> result = stream(*value);
                value.reset();  // what the transfer held (files, copies) goes first
                if (hold) {
                    release(entry);
                }
                finish(std::move(result));
            });
        });
    }

    // A job of the agent's own on the entry's strand (after the operations queued there),
    // counted in flight but neither logged nor measured.
    void post(const EntryPtr& entry, std::function<void(const EntryPtr&)> job);

    // Blocks until nothing runs (SIGTERM: stop accepting, then drain).
    void wait_idle();
    // The same for at most `limit`: whether nothing runs.
    [[nodiscard]] bool wait_idle_for(std::chrono::milliseconds limit);
    [[nodiscard]] std::size_t in_flight() const;

  private:
    // Runs `job` on the entry's strand, after the transfer holding the entry, if any.
    void on_strand(const EntryPtr& entry, std::function<void()> job);
    // Ends a transfer's hold: the jobs that waited run on the strand, in order.
    void release(const EntryPtr& entry);
    // 404 for an operation on an entry destroyed meanwhile (call on its strand).
    std::optional<Failure> gone(const EntryPtr& entry, const std::string& op,
                                const std::string& id);
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
