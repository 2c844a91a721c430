#pragma once

#include <algorithm>
#include <array>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/state/sandbox.hpp"
#include "agent/state/state_store.hpp"
#include "agent/table/failure.hpp"

namespace wrenn::agent {

// Why a running sandbox's device I/O is suspended: each reason is a holder (suspensions.hpp).
enum class SuspendReason { Fork, Export, Space };
inline constexpr std::size_t kSuspendReasons = 3;
std::string_view to_string(SuspendReason reason);

// One sandbox in the table. Its fields are guarded by the table's lock (read and change them
// through SandboxTable); everything that changes the kernel or the disk for this sandbox runs
// on `strand`, one operation at a time.
struct Entry {
    explicit Entry(boost::asio::thread_pool& pool) : strand(boost::asio::make_strand(pool)) {}
    boost::asio::strand<boost::asio::thread_pool::executor_type> strand;
    Sandbox record;
    bool ready = false;        // false while its create is in flight: invisible to reads
    bool gone = false;         // destroyed (or its create failed): later operations say not found
    bool origin_held = false;  // we hold a reference on its origin (running, origin acquired)
    // Bumped at every change of `record` by an operation: a read that went to the kernel
    // writes back only if nothing changed meanwhile.
    std::uint64_t generation = 0;
    // Who holds its device's I/O suspended, by SuspendReason, and why its last resume failed
    // (empty: it did not). Not in the record: the kernel holds the fact, and recovery reads it
    // back from there. Changed only by Suspensions, which orders this device's suspend and
    // resume calls with suspend_mu (reads never take it).
    std::array<unsigned, kSuspendReasons> holds{};
    std::string resume_error;
    std::mutex suspend_mu;
    // A transfer holds the entry while it streams on the transfer pool (a paused sandbox's
    // export, an import): jobs that reach the strand meanwhile wait here, without a thread,
    // and run in order once it lets go. Touched only on the strand.
    bool held_by_transfer = false;
    std::vector<std::function<void()>> after_transfer;

    [[nodiscard]] bool held(SuspendReason reason) const {
        return holds[static_cast<std::size_t>(reason)] > 0;
    }
    [[nodiscard]] bool suspended() const {
        return !resume_error.empty() ||
               std::any_of(holds.begin(), holds.end(), [](unsigned n) { return n > 0; });
    }
};
using EntryPtr = std::shared_ptr<Entry>;

// The sandboxes the agent knows, in memory, with their records. Reads never wait on a kernel
// operation: they take the lock for a copy. A record changes only through commit(), which
// writes it to the state dir first.
class SandboxTable {
  public:
    SandboxTable(StateStore& store, boost::asio::thread_pool& workers);

    // The ready, live entry of this id, or null.
    [[nodiscard]] EntryPtr find(const std::string& id) const;
    // A new sandbox's entry, not ready (invisible to reads) until settle(): 400 when the id is
    // not a valid name, 409 when it is taken. settle() makes it visible, or removes it when its
    // create, fork or import failed.
    Result<EntryPtr, Failure> reserve(const std::string& id, const std::string& what);
    void settle(const EntryPtr& entry, bool made);
    // Recovery: a sandbox read back from its record, ready at once.
    void adopt(const EntryPtr& entry);
    // Destroy: the entry is gone, and later operations on it say not found.
    void remove(const EntryPtr& entry);

    // Writes the record, then makes it the one reads see. On a failed write the in-memory
    // record still moves on: it says what the kernel now has, and the next start repairs the
    // file. With Write::MemoryOnly the file is not written (its folder is half removed).
    enum class Write { Durable, MemoryOnly };
    Result<void> commit(const EntryPtr& entry, const Sandbox& next, Write write = Write::Durable);

    // The entry's record as it is now.
    [[nodiscard]] Sandbox record(const EntryPtr& entry) const;
    // What reads show: the record and what the kernel is doing with it now.
    [[nodiscard]] std::optional<Sandbox> get(const std::string& id) const;
    [[nodiscard]] std::vector<Sandbox> list() const;
    // The entry's view and its generation, for a read that goes to the kernel and writes its
    // answer back with update_if_unchanged().
    [[nodiscard]] std::pair<Sandbox, std::uint64_t> view(const EntryPtr& entry) const;
    // Applies `change` to the record unless an operation changed it since `generation`; the
    // view after it.
    Sandbox update_if_unchanged(const EntryPtr& entry, std::uint64_t generation,
                                const std::function<void(Sandbox&)>& change);

    // Every entry `pick` chooses, the lock held while it looks (pick must not block).
    [[nodiscard]] std::vector<EntryPtr> select(const std::function<bool(const Entry&)>& pick) const;
    // Reads or changes an entry's fields under the lock (fn must not block).
    template <class Fn>
    auto with(const EntryPtr& entry, Fn fn) const {
        std::lock_guard lock(mu_);
        return fn(*entry);
    }

    [[nodiscard]] boost::asio::thread_pool& workers() const { return workers_; }

  private:
    static Sandbox view_of(const Entry& entry);

    StateStore& store_;
    boost::asio::thread_pool& workers_;
    mutable std::mutex mu_;  // guards entries_ and every Entry's fields but its strand
    std::map<std::string, EntryPtr> entries_;
};

}  // namespace wrenn::agent
