// The sandboxes' side of space on the state filesystem: refusing new work below --min-free,
// and suspending and resuming running devices for the SpaceWatcher (space.hpp).
//
// The watcher acts outside the sandboxes' strands, so that a long operation on one sandbox
// never delays the suspension that keeps every other snapshot valid. That is safe because
// suspend and resume are idempotent in the kernel and a device that goes away meanwhile (a
// pause or destroy) answers ENXIO: the flag on the entry is only what reads show, and commit()
// clears it whenever the sandbox's device is removed or made anew.
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include "agent/sandbox_manager.hpp"

namespace wrenn::agent {

Sandbox SandboxManager::view_of(const Entry& entry) {
    Sandbox out = entry.record;
    out.io_suspended_for_space = entry.io_suspended && out.state == SandboxState::Running;
    return out;
}

std::optional<Failure> SandboxManager::check_space(const std::string& what) const {
    if (space_ == nullptr) {
        return std::nullopt;
    }
    if (auto refused = space_->refuse_new_work()) {
        return failure(FailureKind::InsufficientStorage, what, ENOSPC, *refused);
    }
    return std::nullopt;
}

std::size_t SandboxManager::suspend_for_space() {
    std::vector<std::pair<std::string, EntryPtr>> targets;
    {
        std::lock_guard lock(mu_);
        for (const auto& [id, entry] : entries_) {
            if (entry->ready && !entry->gone && entry->record.state == SandboxState::Running &&
                !entry->io_suspended) {
                targets.emplace_back(id, entry);
            }
        }
    }
    std::size_t suspended = 0;
    for (const auto& [id, entry] : targets) {
        auto done = platform_.suspend_snapshot(id);
        if (!done) {
            if (done.error().code() != ENXIO) {  // ENXIO: paused or destroyed meanwhile
                spdlog::error("sandbox={} op=suspend-for-space {}", id, done.error().message());
            }
            continue;
        }
        std::lock_guard lock(mu_);
        if (!entry->gone && entry->record.state == SandboxState::Running) {
            entry->io_suspended = true;
            ++suspended;
            spdlog::warn("sandbox={} op=suspend-for-space its I/O waits until space returns", id);
        }
    }
    return suspended;
}

std::size_t SandboxManager::resume_after_space() {
    std::vector<std::pair<std::string, EntryPtr>> targets;
    {
        std::lock_guard lock(mu_);
        for (const auto& [id, entry] : entries_) {
            if (entry->io_suspended) {
                targets.emplace_back(id, entry);
            }
        }
    }
    std::size_t resumed = 0;
    for (const auto& [id, entry] : targets) {
        auto done = platform_.resume_snapshot(id);
        if (!done && done.error().code() != ENXIO) {
            // Kept flagged: the next poll tries again, and reads keep saying so.
            spdlog::error("sandbox={} op=resume-after-space {}", id, done.error().message());
            continue;
        }
        std::lock_guard lock(mu_);
        entry->io_suspended = false;
        if (done) {
            ++resumed;
            spdlog::info("sandbox={} op=resume-after-space its I/O runs again", id);
        }
    }
    return resumed;
}

std::size_t SandboxManager::suspended_for_space() const {
    std::lock_guard lock(mu_);
    std::size_t n = 0;
    for (const auto& [id, entry] : entries_) {
        n += entry->io_suspended && !entry->gone && entry->record.state == SandboxState::Running
                 ? 1
                 : 0;
    }
    return n;
}

std::vector<std::pair<std::string, std::uint64_t>> SandboxManager::cow_disk_usage() const {
    std::vector<std::pair<std::string, std::string>> cows;
    {
        std::lock_guard lock(mu_);
        for (const auto& [id, entry] : entries_) {
            if (entry->ready && !entry->gone) {
                cows.emplace_back(id, entry->record.cow_path);
            }
        }
    }
    std::vector<std::pair<std::string, std::uint64_t>> out;
    out.reserve(cows.size());
    for (const auto& [id, path] : cows) {
        struct stat st {};
        if (::stat(path.c_str(), &st) == 0) {
            out.emplace_back(id, static_cast<std::uint64_t>(st.st_blocks) * 512);
        }
    }
    return out;
}

}  // namespace wrenn::agent
