#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/result.hpp"
#include "tcmu/configfs/origin_policy.hpp"
#include "tcmu/device/attach_request.hpp"
#include "tcmu/device/detach.hpp"

namespace wrenn::tcmu {

// What the registry asks of the devices beneath it, by id; faked in unit tests. Each is the
// Configfs call of the same name (configfs.hpp says what it guarantees).
class OriginDevices {
  public:
    virtual ~OriginDevices() = default;
    // "/dev/sdX" when the id's device and disk are there (Configfs::find_attached).
    virtual Result<std::optional<std::string>> find(std::string_view id) = 0;
    // EEXIST unless the id was attached for `origin` (Configfs::check_attached).
    virtual Result<void> check(std::string_view id, const DeviceIdentity& origin) = 0;
    virtual Result<std::string> attach(const AttachRequest& request) = 0;
    // Refuses (EEXIST) a device attached for another origin, and a disk in use (EBUSY).
    virtual Result<void> detach(std::string_view id, const DeviceIdentity& origin) = 0;
    // The disk's size in bytes, from sysfs.
    virtual Result<std::uint64_t> disk_size(const std::string& disk) = 0;
    virtual Result<UnusedDetached> detach_unused(std::string_view tag,
                                                 const std::vector<std::string>& in_use) = 0;
};

// The real one: a Configfs over the kernel (configfs_origin_devices.cpp).
std::unique_ptr<OriginDevices> make_configfs_origin_devices();

// A shared disk as acquire hands it out.
struct SharedDisk {
    std::string device;  // "/dev/sdX"
    std::uint64_t size_bytes = 0;
};

// Owns the agent's references to TCMU origins: one device per origin (DeviceIdentity: handler,
// config, size), at the id id_for_origin gives it, reference-counted across the sandboxes over
// it; thread-safe. The first acquire adopts the device when one is already attached for exactly
// this origin (by an earlier run of the agent, or under the pre-SHA-256 legacy id), else attaches
// it; the last release detaches it. A device attached for another origin is never used or
// detached. (loop::LoopRegistry is the same for template loops.)
//
// Locking, unlike LoopRegistry's: one mutex is held across every attach and detach, so one
// origin changes at a time. An attach writes the device's serial first, so a detach_unused
// running beside it would see our mark on an id no origin holds yet and sweep it away. attached()
// reads a counter and never waits behind an attach that holds the mutex for seconds.
class OriginRegistry {
  public:
    struct Options {
        // The state dir's tag: attach writes owner_serial(tag, id) into every device it makes,
        // and detach_unused knows ours by it. Empty: no serial, and detach_unused touches nothing.
        std::string owner_tag;
        // Every attach is for the API: its log goes only beneath the config's own folder.
        OriginPolicy api_policy;
    };
    OriginRegistry(std::unique_ptr<OriginDevices> devices, Options options);
    OriginRegistry(const OriginRegistry&) = delete;
    OriginRegistry& operator=(const OriginRegistry&) = delete;

    // The origin's disk; adopts or attaches it on first use. A failed attach is not cached.
    Result<SharedDisk> acquire(const DeviceIdentity& origin);
    // The last release detaches the device (a failure is logged: the device stays). Releasing an
    // origin that holds no reference is a caller bug: it is logged and ignored.
    void release(const DeviceIdentity& origin);
    // Boot-time cleanup: detaches the device of each origin that is attached for it (a device
    // at its id attached for another origin is left alone, with a warning) and forgets the
    // origin. Returns how many were detached; stops at the first detach that fails.
    Result<std::size_t> detach(const std::vector<DeviceIdentity>& origins);
    // Detaches every device with our mark (Options::owner_tag) that no origin held now uses
    // (Configfs::detach_unused).
    Result<UnusedDetached> detach_unused();

    // References held now.
    std::size_t references(const DeviceIdentity& origin) const;
    // How many origins have a device now; never waits for the mutex.
    std::size_t attached() const { return attached_.load(); }
    // Origin -> references, for every origin with a device now.
    std::vector<std::pair<DeviceIdentity, std::size_t>> entries() const;

  private:
    struct Entry {
        std::string id;
        std::string device;
        std::uint64_t size_bytes = 0;
        std::size_t references = 0;
    };

    // A device attached for this origin under its pre-SHA-256 id: (id, "/dev/sdX"). mutex_ held.
    std::optional<std::pair<std::string, std::string>> find_legacy(const DeviceIdentity& origin);
    void count_attached() { attached_ = entries_.size(); }  // mutex_ held

    std::unique_ptr<OriginDevices> devices_;
    Options options_;
    mutable std::mutex mutex_;  // held across attach/detach: one origin changes at a time
    std::map<DeviceIdentity, Entry> entries_;
    std::atomic<std::size_t> attached_{0};  // entries_.size()
};

}  // namespace wrenn::tcmu
