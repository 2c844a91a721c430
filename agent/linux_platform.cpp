#include "agent/linux_platform.hpp"

#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <fstream>

#include "dm/snapshot_format.hpp"
#include "flatten/exception_store.hpp"
#include "flatten/flatten.hpp"
#include "loop/loop_device.hpp"
#include "tcmu/configfs.hpp"
#include "tcmu/naming.hpp"

namespace wrenn::agent {

namespace {

bool path_exists(const char* path) {
    struct stat st {};
    return ::stat(path, &st) == 0;
}

// A block device's size from sysfs (/sys/class/block/<name>/size is in 512-byte sectors).
Result<std::uint64_t> block_device_size(const std::string& device) {
    const std::string name = device.substr(device.rfind('/') + 1);
    const std::string path = "/sys/class/block/" + name + "/size";
    std::ifstream in(path);
    std::uint64_t sectors = 0;
    if (!(in >> sectors)) {
        return Error("read size of " + device, errno != 0 ? errno : EIO, path);
    }
    return sectors * 512;
}

}  // namespace

LinuxPlatform::LinuxPlatform(Options options)
    : options_(std::move(options)), loops_(loop::make_kernel_image_attacher()) {
    auto mapper = dm::DeviceMapper::open();
    if (mapper) {
        dm_.emplace(std::move(mapper).value());
        support_.device_mapper = true;
    } else {
        support_.device_mapper_reason =
            mapper.error().message() +
            "; load it with 'modprobe dm-snapshot' (the agent must run as root)";
    }
    if (::access("/dev/loop-control", R_OK | W_OK) == 0) {
        support_.loop = true;
    } else {
        support_.loop_reason = "cannot open /dev/loop-control: " + describe_errno(errno) +
                               " (modprobe loop; run as root)";
    }
    if (path_exists("/sys/kernel/config/target/core") &&
        path_exists("/sys/module/target_core_user") && path_exists("/sys/module/tcm_loop")) {
        support_.tcmu = true;
    } else {
        support_.tcmu_reason =
            "needs configfs at /sys/kernel/config and the target_core_user and tcm_loop modules";
    }
}

KernelSupport LinuxPlatform::support() {
    return support_;
}

Platform::OriginCounts LinuxPlatform::attached_origins() {
    OriginCounts counts;
    counts.loops = loops_.attached();
    counts.tcmu = tcmu_attached_.load();
    return counts;
}

Result<dm::DeviceMapper*> LinuxPlatform::mapper() {
    if (!dm_) {
        return Error("device-mapper", ENODEV, support_.device_mapper_reason);
    }
    return &*dm_;
}

Result<AttachedOrigin> LinuxPlatform::acquire_origin(const OriginSpec& origin) {
    if (origin.type == OriginSpec::Type::Loop) {
        struct stat st {};
        if (::stat(origin.path.c_str(), &st) != 0) {
            return errno_error("open template " + origin.path);
        }
        auto device = loops_.acquire(origin.path);
        if (!device) {
            return std::move(device).error();
        }
        // A loop device is the file's size rounded down to whole sectors.
        return AttachedOrigin{*device, static_cast<std::uint64_t>(st.st_size) / 512 * 512};
    }

    std::lock_guard lock(tcmu_mu_);
    auto it = tcmu_.find(origin.path);
    if (it != tcmu_.end()) {
        ++it->second.references;
        return AttachedOrigin{it->second.device, it->second.size_bytes};
    }
    TcmuOrigin entry;
    entry.id = tcmu::id_for_config(origin.path);
    auto found = tcmu::find_attached(entry.id);
    if (found && found->has_value()) {
        entry.device = **found;  // attached by an earlier run of the agent
    } else {
        tcmu::AttachRequest request;
        request.id = entry.id;
        request.config_path = origin.path;
        request.handler = origin.handler;
        request.size_bytes = origin.size_bytes;
        auto device = tcmu::attach(request);
        if (!device) {
            return std::move(device).error();
        }
        entry.device = *device;
    }
    auto size = block_device_size(entry.device);
    if (!size) {
        return std::move(size).error();
    }
    entry.size_bytes = *size;
    entry.references = 1;
    AttachedOrigin attached{entry.device, entry.size_bytes};
    tcmu_.emplace(origin.path, std::move(entry));
    tcmu_attached_ = tcmu_.size();
    return attached;
}

void LinuxPlatform::release_origin(const OriginSpec& origin) {
    if (origin.type == OriginSpec::Type::Loop) {
        loops_.release(origin.path);
        return;
    }
    std::lock_guard lock(tcmu_mu_);
    auto it = tcmu_.find(origin.path);
    if (it == tcmu_.end()) {
        spdlog::warn("release of TCMU origin {} that is not held", origin.path);
        return;
    }
    if (--it->second.references > 0) {
        return;
    }
    if (auto detached = tcmu::detach(it->second.id); !detached) {
        spdlog::error("detach TCMU origin {}: {}", origin.path, detached.error().message());
    }
    tcmu_.erase(it);
    tcmu_attached_ = tcmu_.size();
}

Result<std::string> LinuxPlatform::create_snapshot(const std::string& id,
                                                   const std::string& origin_device,
                                                   std::uint64_t origin_bytes,
                                                   const std::string& cow_path) {
    auto dm = mapper();
    if (!dm) {
        return std::move(dm).error();
    }
    // Autoclear: once the snapshot holds the CoW loop and our descriptor closes (at the end of
    // this scope, on success or failure), the loop lives exactly as long as the snapshot.
    auto cow = loop::LoopDevice::attach(cow_path, loop::AttachOptions{false, true, true});
    if (!cow) {
        return std::move(cow).error();
    }
    return (*dm)->create_snapshot(dm::device_name(id), dm::device_uuid(options_.owner_tag, id),
                                  origin_bytes / 512, origin_device, cow->path());
}

Result<void> LinuxPlatform::remove_snapshot(const std::string& id) {
    auto dm = mapper();
    if (!dm) {
        return std::move(dm).error();
    }
    return (*dm)->remove(dm::device_name(id), options_.remove_time_limit);
}

Result<std::optional<SnapshotInfo>> LinuxPlatform::snapshot_info(const std::string& id) {
    auto dm = mapper();
    if (!dm) {
        return std::move(dm).error();
    }
    auto info = (*dm)->info(dm::device_name(id));
    if (!info) {
        return std::move(info).error();
    }
    if (!info->has_value()) {
        return std::optional<SnapshotInfo>{};
    }
    return std::optional<SnapshotInfo>{SnapshotInfo{true, (*info)->open_count}};
}

Result<SnapshotUsage> LinuxPlatform::snapshot_usage(const std::string& id) {
    auto dm = mapper();
    if (!dm) {
        return std::move(dm).error();
    }
    auto status = (*dm)->snapshot_status(dm::device_name(id));
    if (!status) {
        return std::move(status).error();
    }
    SnapshotUsage usage;
    using S = dm::SnapshotStatus::State;
    usage.state = status->state == S::Active     ? SnapshotUsage::State::Active
                  : status->state == S::Invalid  ? SnapshotUsage::State::Invalid
                  : status->state == S::Overflow ? SnapshotUsage::State::Overflow
                                                 : SnapshotUsage::State::Other;
    usage.allocated_bytes = status->allocated_sectors * 512;
    usage.total_bytes = status->total_sectors * 512;
    return usage;
}

Result<std::vector<ListedDevice>> LinuxPlatform::list_snapshots() {
    auto dm = mapper();
    if (!dm) {
        return std::move(dm).error();
    }
    auto listed = (*dm)->list_snapshots();
    if (!listed) {
        return std::move(listed).error();
    }
    std::vector<ListedDevice> out;
    for (const auto& device : *listed) {
        std::string id = device.name.substr(dm::kNamePrefix.size());
        const dm::DeviceOwner owner = dm::classify_device_uuid(device.uuid, options_.owner_tag, id);
        out.push_back(ListedDevice{std::move(id), owner});
    }
    return out;
}

Result<bool> LinuxPlatform::snapshot_over_cow(const std::string& id, const std::string& cow_path) {
    auto dm = mapper();
    if (!dm) {
        return std::move(dm).error();
    }
    const std::string what = "check the CoW of " + dm::device_name(id);
    auto devices = (*dm)->snapshot_devices(dm::device_name(id));
    if (!devices) {
        // Gone meanwhile, or no live table (a create cut short): not over any CoW.
        if (devices.error().code() == ENXIO || devices.error().code() == EINVAL) {
            return false;
        }
        return std::move(devices).error();
    }
    unsigned major = 0, minor = 0;
    if (std::sscanf(devices->second.c_str(), "%u:%u", &major, &minor) != 2) {
        return Error(what, EINVAL, "unexpected CoW device \"" + devices->second + "\"");
    }
    struct stat cow {};
    if (::stat(cow_path.c_str(), &cow) != 0) {
        if (errno == ENOENT) {
            return false;
        }
        return errno_error("stat " + cow_path).within(what);
    }
    auto bound = loop::LoopDevice::list_bound();
    if (!bound) {
        return std::move(bound).error().within(what);
    }
    for (const auto& loop : *bound) {
        struct stat node {};
        if (::stat(loop.device.c_str(), &node) != 0 || !S_ISBLK(node.st_mode) ||
            node.st_rdev != makedev(major, minor)) {
            continue;
        }
        return loop.backing_dev == cow.st_dev && loop.backing_ino == cow.st_ino;
    }
    return false;  // the CoW device is not a loop: not one of ours
}

Result<bool> LinuxPlatform::cow_store_valid(const std::string& cow_path,
                                            std::uint64_t origin_bytes) {
    auto store = flatten::read_exception_store_file(cow_path, origin_bytes);
    if (store) {
        return true;
    }
    if (flatten::store_marked_invalid(store.error())) {
        return false;
    }
    return std::move(store).error();
}

Result<FlattenResult> LinuxPlatform::flatten(const std::string& origin, const std::string& cow_path,
                                             const std::string& out) {
    auto stats = flatten::flatten(origin, cow_path, out);
    if (!stats) {
        return std::move(stats).error();
    }
    spdlog::info("flattened {} + {} into {}: {} chunks applied, {} ({})", origin, cow_path, out,
                 stats->chunks_applied, flatten::to_string(stats->method),
                 flatten::describe_phases(*stats));
    return FlattenResult{stats->size_bytes, stats->chunks_applied,
                         std::string(flatten::to_string(stats->method))};
}

Result<std::size_t> LinuxPlatform::release_loops_under(const std::string& dir) {
    auto bound = loop::LoopDevice::list_bound();
    if (!bound) {
        return std::move(bound).error();
    }
    const std::string prefix = dir.back() == '/' ? dir : dir + "/";
    std::size_t released = 0;
    for (const auto& status : *bound) {
        if (status.backing_file.rfind(prefix, 0) != 0) {
            continue;
        }
        auto device = loop::LoopDevice::open_existing(status.backing_file, status.read_only);
        if (!device || !device->has_value()) {
            continue;  // gone meanwhile
        }
        if (auto detached = (*device)->detach(); !detached) {
            return std::move(detached).error();
        }
        spdlog::info("released {} (backed by {})", status.device, status.backing_file);
        ++released;
    }
    return released;
}

Result<std::size_t> LinuxPlatform::detach_tcmu_origins(const std::vector<std::string>& configs) {
    std::size_t detached = 0;
    std::lock_guard lock(tcmu_mu_);
    for (const auto& config : configs) {
        const std::string id = tcmu::id_for_config(config);
        auto found = tcmu::find_attached(id);
        if (!found) {
            return std::move(found).error();
        }
        if (!found->has_value()) {
            continue;
        }
        if (auto done = tcmu::detach(id); !done) {
            return std::move(done).error();
        }
        tcmu_.erase(config);
        tcmu_attached_ = tcmu_.size();
        ++detached;
    }
    return detached;
}

}  // namespace wrenn::agent
