#include "tcmu/origin_registry.hpp"

#include <spdlog/spdlog.h>

#include "tcmu/configfs/naming.hpp"

namespace wrenn::tcmu {

OriginRegistry::OriginRegistry(std::unique_ptr<OriginDevices> devices, Options options)
    : devices_(std::move(devices)), options_(std::move(options)) {}

Result<SharedDisk> OriginRegistry::acquire(const DeviceIdentity& origin) {
    std::lock_guard lock(mutex_);
    auto it = entries_.find(origin);
    if (it != entries_.end()) {
        ++it->second.references;
        return SharedDisk{it->second.device, it->second.size_bytes};
    }
    Entry entry;
    entry.id = id_for_origin(origin.handler, origin.config_path, origin.size_bytes);
    auto found = devices_->find(entry.id);
    if (found && !found->has_value()) {
        // An agent from before SHA-256 ids attached it under the config's old id (a sandbox
        // running across the upgrade): that device, if it is exactly this origin, is the one.
        if (auto legacy = find_legacy(origin)) {
            entry.id = legacy->first;
            found = std::optional<std::string>(legacy->second);
        }
    }
    bool attached_here = false;
    if (found && found->has_value()) {
        // Attached by an earlier run of the agent, or by someone else under a colliding id:
        // reused only when it was configured for exactly this origin.
        if (auto same = devices_->check(entry.id, origin); !same) {
            return std::move(same).error().within("use TCMU origin " + origin.config_path);
        }
        entry.device = **found;
    } else {
        attached_here = true;
        AttachRequest request;
        request.id = entry.id;
        request.config_path = origin.config_path;
        request.handler = origin.handler;
        request.size_bytes = origin.size_bytes;
        // The agent attaches for the API: its log stays inside the config's folder.
        request.api_policy = options_.api_policy;
        // Our mark, so that recovery can tell the device is ours once no record says so.
        if (!options_.owner_tag.empty()) {
            request.serial = owner_serial(options_.owner_tag, entry.id);
        }
        auto device = devices_->attach(request);
        if (!device) {
            return std::move(device).error();
        }
        entry.device = *device;
    }
    auto size = devices_->disk_size(entry.device);
    if (!size) {
        // Nobody will hold this origin: a device attached just now goes again.
        if (attached_here) {
            if (auto undone = devices_->detach(entry.id, origin); !undone) {
                spdlog::error("undo TCMU attach of {}: {}", origin.config_path,
                              undone.error().message());
            }
        }
        return std::move(size).error().within("use TCMU origin " + origin.config_path);
    }
    entry.size_bytes = *size;
    entry.references = 1;
    SharedDisk shared{entry.device, entry.size_bytes};
    entries_.emplace(origin, std::move(entry));
    count_attached();
    return shared;
}

void OriginRegistry::release(const DeviceIdentity& origin) {
    std::lock_guard lock(mutex_);
    auto it = entries_.find(origin);
    if (it == entries_.end()) {
        spdlog::warn("release of TCMU origin {} that is not held", origin.config_path);
        return;
    }
    if (--it->second.references > 0) {
        return;
    }
    if (auto detached = devices_->detach(it->second.id, origin); !detached) {
        spdlog::error("detach TCMU origin {}: {}", origin.config_path, detached.error().message());
    }
    entries_.erase(it);
    count_attached();
}

Result<std::size_t> OriginRegistry::detach(const std::vector<DeviceIdentity>& origins) {
    std::size_t detached = 0;
    std::lock_guard lock(mutex_);
    for (const auto& origin : origins) {
        std::string id = id_for_origin(origin.handler, origin.config_path, origin.size_bytes);
        auto found = devices_->find(id);
        if (!found) {
            return std::move(found).error();
        }
        if (!found->has_value()) {
            auto legacy = find_legacy(origin);
            if (!legacy) {
                continue;
            }
            id = legacy->first;
        }
        if (auto same = devices_->check(id, origin); !same) {
            // Not ours (another origin under the same id): never detach another's disk.
            spdlog::warn("cleanup: leaving TCMU device {} alone: {}", id, same.error().message());
            continue;
        }
        if (auto done = devices_->detach(id, origin); !done) {
            return std::move(done).error();
        }
        entries_.erase(origin);
        count_attached();
        ++detached;
    }
    return detached;
}

Result<UnusedDetached> OriginRegistry::detach_unused() {
    std::lock_guard lock(mutex_);
    std::vector<std::string> in_use;
    for (const auto& [origin, held] : entries_) {
        in_use.push_back(held.id);
    }
    return devices_->detach_unused(options_.owner_tag, in_use);
}

std::size_t OriginRegistry::references(const DeviceIdentity& origin) const {
    std::lock_guard lock(mutex_);
    auto it = entries_.find(origin);
    return it == entries_.end() ? 0 : it->second.references;
}

std::vector<std::pair<DeviceIdentity, std::size_t>> OriginRegistry::entries() const {
    std::lock_guard lock(mutex_);
    std::vector<std::pair<DeviceIdentity, std::size_t>> out;
    for (const auto& [origin, entry] : entries_) {
        out.emplace_back(origin, entry.references);
    }
    return out;
}

std::optional<std::pair<std::string, std::string>> OriginRegistry::find_legacy(
    const DeviceIdentity& origin) {
    const std::string id = legacy_id_for_config(origin.config_path);
    auto found = devices_->find(id);
    if (!found || !found->has_value()) {
        return std::nullopt;
    }
    if (auto same = devices_->check(id, origin); !same) {
        spdlog::debug("TCMU id {} (the old id of {}) is another origin's: {}", id,
                      origin.config_path, same.error().message());
        return std::nullopt;
    }
    spdlog::info("TCMU origin {}: found under its pre-SHA-256 id {}; reusing it",
                 origin.config_path, id);
    return std::make_pair(id, **found);
}

}  // namespace wrenn::tcmu
