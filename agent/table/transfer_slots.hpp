#pragma once

#include <atomic>
#include <boost/asio/thread_pool.hpp>
#include <cstddef>
#include <memory>
#include <optional>

namespace wrenn::agent {

// Where exports and imports stream: a pool of their own, so that clients however slow never
// take the workers that create, pause, resume, destroy and fork run on, and a cap on how many
// run at once (--max-transfers), one thread each. A transfer takes a slot before it starts
// and gives it back when it ends; with none free it is refused, not queued.
class TransferSlots {
  public:
    explicit TransferSlots(std::size_t max_transfers);
    ~TransferSlots();
    TransferSlots(const TransferSlots&) = delete;
    TransferSlots& operator=(const TransferSlots&) = delete;

    // Held for a transfer's length; the slot comes back when the last copy goes.
    using Slot = std::shared_ptr<void>;
    [[nodiscard]] std::optional<Slot> try_acquire();

    boost::asio::thread_pool& pool() { return pool_; }
    [[nodiscard]] std::size_t max() const { return max_; }
    [[nodiscard]] std::size_t active() const { return active_.load(); }

    // Waits for the transfers posted so far and stops the pool.
    void join();

  private:
    const std::size_t max_;
    std::atomic<std::size_t> active_{0};
    boost::asio::thread_pool pool_;
};

}  // namespace wrenn::agent
