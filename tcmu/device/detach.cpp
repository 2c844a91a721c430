#include "tcmu/device/detach.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <iterator>
#include <span>

#include "tcmu/configfs/naming.hpp"
#include "tcmu/device/queries.hpp"

namespace wrenn::tcmu {

Result<void> Detacher::detach(std::string_view id, const std::optional<DeviceIdentity>& expected) {
    if (!is_valid_id(id)) {
        return invalid_id("detach tcmu device", id);
    }
    const DevicePaths paths(id, options_);
    const std::string action = "detach tcmu device " + std::string(id);
    if (expected && ops_.exists(paths.core)) {
        if (Result<void> same = DeviceQueries(ops_, options_).check_attached(id, *expected);
            !same) {
            return std::move(same).error().within(action);
        }
    }
    // Removing the LUN under a device-mapper table would fail its I/O (and invalidate a
    // persistent snapshot's CoW), so refuse while the disk has holders in sysfs.
    if (auto disk = disk_name(ops_, paths, options_)) {
        auto holders = ops_.list_dir(options_.sys_root + "/class/block/" + *disk + "/holders");
        if (holders && !holders->empty()) {
            std::string names;
            for (const std::string& h : *holders) {
                names += (names.empty() ? "" : ", ") + h;
            }
            return Error(action, EBUSY, options_.dev_root + "/" + *disk + " is held by " + names);
        }
        // A mounted disk has no holders; an exclusive open tells (and so does a dm table).
        const std::string dev = options_.dev_root + "/" + *disk;
        if (Result<void> free = ops_.open_exclusive(dev); !free) {
            if (free.error().code() == EBUSY) {
                return Error(action, EBUSY,
                             dev + " is mounted or open exclusively; unmount it first");
            }
            if (free.error().code() != ENOENT && free.error().code() != ENXIO) {
                return std::move(free).error().within(action);
            }
        }
    }
    // The reverse of attach.
    if (Result<void> r = remove_parts(paths, true, action); !r) {
        return r;
    }
    spdlog::info("tcmu: detached {}", id);
    return success();
}

Result<UnusedDetached> Detacher::detach_unused(std::string_view tag,
                                               const std::vector<std::string>& in_use) {
    UnusedDetached out;
    if (tag.empty()) {
        return out;  // no mark to know ours by: touch nothing
    }
    const DeviceQueries queries(ops_, options_);
    auto ids = queries.list_attached();
    if (!ids) {
        return std::move(ids).error();
    }
    for (const std::string& id : *ids) {
        if (std::find(in_use.begin(), in_use.end(), id) != in_use.end()) {
            continue;
        }
        auto serial = queries.attached_serial(id);
        if (!serial) {
            if (serial.error().code() != ENOENT) {  // ENOENT: detached meanwhile
                out.left.push_back(std::move(serial).error());
            }
            continue;
        }
        if (*serial != owner_serial(tag, id)) {
            spdlog::debug("tcmu: device {} is not ours (serial \"{}\"); left alone", id,
                          escape_for_log(*serial));
            continue;
        }
        auto config = queries.attached_config(id);
        const std::string what = config ? *config : std::string("no dev_config");
        if (Result<void> done = detach(id); !done) {
            spdlog::warn("tcmu: device {} ({}) is ours and no sandbox uses it, but it stays: {}",
                         id, escape_for_log(what), done.error().message());
            out.left.push_back(std::move(done).error());
            continue;
        }
        spdlog::info("tcmu: detached device {} ({}): ours, and no sandbox uses it", id,
                     escape_for_log(what));
        out.detached.push_back(id);
    }
    return out;
}

Result<void> Detacher::remove_loopback_target(std::string_view id, const std::string& action) {
    return remove_parts(DevicePaths(id, options_), false, action);
}

// Removes, in this order and each only if it is there, the LUN link, lun_0, tpgt_1, the loopback
// target and (with_core) the core device.
Result<void> Detacher::remove_parts(const DevicePaths& paths, bool with_core,
                                    const std::string& action) {
    struct Step {
        bool link;
        const std::string& path;
    };
    const Step steps[] = {{true, paths.link},
                          {false, paths.lun},
                          {false, paths.tpg},
                          {false, paths.target},
                          {false, paths.core}};
    const std::size_t count = with_core ? std::size(steps) : std::size(steps) - 1;
    for (const Step& step : std::span(steps, count)) {
        Result<void> r = step.link ? ops_.remove_link(step.path) : ops_.remove_dir(step.path);
        // ENOENT: that part is already gone (or was never made).
        if (!r && r.error().code() != ENOENT) {
            return std::move(r).error().within(action);
        }
        spdlog::debug("tcmu: {}: {} {}", action, r ? "removed" : "already gone:", step.path);
    }
    return success();
}

}  // namespace wrenn::tcmu
