#include "agent/table/sandbox_table.hpp"

#include "agent/table/checks.hpp"

namespace wrenn::agent {

std::string_view to_string(SuspendReason reason) {
    switch (reason) {
        case SuspendReason::Fork:
            return "fork";
        case SuspendReason::Export:
            return "export";
        case SuspendReason::Space:
            return "space";
    }
    return "unknown";
}

SandboxTable::SandboxTable(StateStore& store, boost::asio::thread_pool& workers)
    : store_(store), workers_(workers) {}

EntryPtr SandboxTable::find(const std::string& id) const {
    std::lock_guard lock(mu_);
    auto it = entries_.find(id);
    if (it == entries_.end() || !it->second->ready || it->second->gone) {
        return nullptr;
    }
    return it->second;
}

Result<EntryPtr, Failure> SandboxTable::reserve(const std::string& id, const std::string& what) {
    if (auto bad = check_name(id, "id", what)) {
        return *bad;
    }
    auto entry = std::make_shared<Entry>(workers_);
    entry->record.id = id;
    std::lock_guard lock(mu_);
    if (!entries_.emplace(id, entry).second) {
        return failure(FailureKind::AlreadyExists, what, 0, "a sandbox with this id exists");
    }
    return entry;
}

void SandboxTable::settle(const EntryPtr& entry, bool made) {
    std::lock_guard lock(mu_);
    if (made) {
        entry->ready = true;
    } else {
        entry->gone = true;
        entries_.erase(entry->record.id);
    }
}

void SandboxTable::adopt(const EntryPtr& entry) {
    std::lock_guard lock(mu_);
    entry->ready = true;
    entries_[entry->record.id] = entry;
}

void SandboxTable::remove(const EntryPtr& entry) {
    std::lock_guard lock(mu_);
    entry->gone = true;
    entries_.erase(entry->record.id);
}

Result<void> SandboxTable::commit(const EntryPtr& entry, const Sandbox& next, Write write) {
    auto written = write == Write::Durable ? store_.write_record(next) : success();
    std::lock_guard lock(mu_);
    if (next.state != entry->record.state) {
        // Its device was removed, or is a new one: nobody holds it suspended any more.
        entry->holds = {};
        entry->resume_error.clear();
    }
    entry->record = next;
    ++entry->generation;
    return written;
}

Sandbox SandboxTable::record(const EntryPtr& entry) const {
    std::lock_guard lock(mu_);
    return entry->record;
}

Sandbox SandboxTable::view_of(const Entry& entry) {
    Sandbox out = entry.record;
    if (out.state == SandboxState::Running) {
        out.io_suspended_for_space = entry.held(SuspendReason::Space);
        for (std::size_t r = 0; r < kSuspendReasons; ++r) {
            if (entry.holds[r] > 0) {
                out.io_suspended_by.emplace_back(to_string(static_cast<SuspendReason>(r)));
            }
        }
        out.io_error = entry.resume_error;
    }
    return out;
}

std::optional<Sandbox> SandboxTable::get(const std::string& id) const {
    std::lock_guard lock(mu_);
    auto it = entries_.find(id);
    if (it == entries_.end() || !it->second->ready || it->second->gone) {
        return std::nullopt;
    }
    return view_of(*it->second);
}

std::vector<Sandbox> SandboxTable::list() const {
    std::lock_guard lock(mu_);
    std::vector<Sandbox> out;
    out.reserve(entries_.size());
    for (const auto& [id, entry] : entries_) {
        if (entry->ready && !entry->gone) {
            out.push_back(view_of(*entry));
        }
    }
    return out;
}

std::pair<Sandbox, std::uint64_t> SandboxTable::view(const EntryPtr& entry) const {
    std::lock_guard lock(mu_);
    return {view_of(*entry), entry->generation};
}

Sandbox SandboxTable::update_if_unchanged(const EntryPtr& entry, std::uint64_t generation,
                                          const std::function<void(Sandbox&)>& change) {
    std::lock_guard lock(mu_);
    if (entry->generation == generation) {
        change(entry->record);
    }
    return view_of(*entry);
}

std::vector<EntryPtr> SandboxTable::select(const std::function<bool(const Entry&)>& pick) const {
    std::lock_guard lock(mu_);
    std::vector<EntryPtr> out;
    for (const auto& [id, entry] : entries_) {
        if (pick(*entry)) {
            out.push_back(entry);
        }
    }
    return out;
}

}  // namespace wrenn::agent
