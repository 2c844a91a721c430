// Startup recovery and boot cleanup: bringing the table, the records and the kernel back in
// step after the agent (or the host) went away. Part of SandboxManager, in its own file because
// it decides over every sandbox at once, where the rest of the manager works on one.
#include <spdlog/spdlog.h>

#include <cerrno>
#include <set>

#include "agent/sandbox_manager.hpp"

namespace wrenn::agent {

RecoveryReport SandboxManager::recover() {
    RecoveryReport report;
    auto loaded = store_.load();
    if (!loaded) {
        report.problems.push_back(loaded.error().message());
        return report;
    }
    for (const auto& [name, error] : loaded->unreadable) {
        // Kept as they are: a record we cannot read is not a licence to delete its CoW.
        report.problems.push_back("sandbox folder " + name + " left alone: " + error.message());
    }
    // Without device-mapper no snapshot exists: every running record becomes paused.
    Result<std::vector<std::string>> devices = std::vector<std::string>{};
    if (platform_.support().device_mapper) {
        devices = platform_.list_snapshots();
    }
    if (!devices) {
        report.problems.push_back(devices.error().message());
    }
    std::set<std::string> live;
    if (devices) {
        live.insert(devices->begin(), devices->end());
    }
    std::set<std::string> owned;

    for (Sandbox& sb : loaded->sandboxes) {
        auto entry = std::make_shared<Entry>(workers_);
        if (sb.state == SandboxState::Running && live.count(sb.id) != 0) {
            // Adopt: the device is up, so its origin is too; take our reference on it again.
            auto origin = platform_.acquire_origin(sb.origin);
            if (origin) {
                entry->origin_held = true;
                sb.origin_device = origin->device;
            } else {
                report.problems.push_back("adopt " + sb.id + ": " + origin.error().message());
            }
            owned.insert(sb.id);
            ++report.adopted;
            spdlog::info("sandbox={} op=recover result=adopted device={}", sb.id, sb.device);
        } else if (sb.state == SandboxState::Running) {
            sb.state = SandboxState::Paused;
            sb.device.clear();
            sb.origin_device.clear();
            sb.updated_at = utc_now();
            if (auto written = store_.write_record(sb); !written) {
                report.problems.push_back(written.error().message());
            }
            ++report.paused;
            spdlog::info("sandbox={} op=recover result=paused (its device was gone)", sb.id);
        }
        entry->record = sb;
        entry->ready = true;
        std::lock_guard lock(mu_);
        entries_[sb.id] = entry;
    }
    if (devices) {
        for (const auto& id : *devices) {
            if (owned.count(id) != 0) {
                continue;
            }
            if (auto removed = platform_.remove_snapshot(id);
                removed || removed.error().code() == ENXIO) {
                ++report.stale_removed;
                spdlog::info("sandbox={} op=recover result=stale device removed", id);
            } else {
                report.problems.push_back("remove stale device: " + removed.error().message());
            }
        }
    }
    for (const auto& id : loaded->unfinished) {
        if (auto removed = store_.remove_sandbox(id); removed) {
            ++report.unfinished_removed;
            spdlog::info("sandbox={} op=recover result=unfinished create removed", id);
        } else {
            report.problems.push_back(removed.error().message());
        }
    }
    return report;
}

Result<RecoveryReport> SandboxManager::cleanup_stale() {
    RecoveryReport report;
    auto devices = platform_.list_snapshots();
    if (!devices) {
        return std::move(devices).error().within("cleanup-stale");
    }
    std::vector<std::string> failed;
    for (const auto& id : *devices) {
        if (auto removed = platform_.remove_snapshot(id);
            removed || removed.error().code() == ENXIO) {
            ++report.stale_removed;
        } else {
            failed.push_back(removed.error().message());
        }
    }
    auto loaded = store_.load();
    if (!loaded) {
        return std::move(loaded).error().within("cleanup-stale");
    }
    std::vector<std::string> tcmu_configs;
    for (Sandbox& sb : loaded->sandboxes) {
        if (sb.origin.type == OriginSpec::Type::Tcmu) {
            tcmu_configs.push_back(sb.origin.path);
        }
        if (sb.state != SandboxState::Running) {
            continue;
        }
        sb.state = SandboxState::Paused;
        sb.device.clear();
        sb.origin_device.clear();
        sb.updated_at = utc_now();
        if (auto written = store_.write_record(sb); !written) {
            failed.push_back(written.error().message());
        } else {
            ++report.paused;
        }
    }
    for (const std::string& dir : {store_.state_dir(), options_.templates_dir}) {
        if (auto released = platform_.release_loops_under(dir); !released) {
            failed.push_back(released.error().message());
        }
    }
    if (auto detached = platform_.detach_tcmu_origins(tcmu_configs); !detached) {
        failed.push_back(detached.error().message());
    }
    if (!failed.empty()) {
        std::string detail;
        for (const auto& f : failed) {
            detail += (detail.empty() ? "" : "; ") + f;
        }
        return Error("cleanup-stale", 0, detail);
    }
    return report;
}

}  // namespace wrenn::agent
