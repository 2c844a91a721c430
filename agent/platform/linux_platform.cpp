#include "agent/platform/linux_platform.hpp"

#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

#include "agent/state/template_image.hpp"
#include "dm/snapshot_format.hpp"
#include "flatten/exception_store.hpp"
#include "flatten/flatten.hpp"
#include "loop/loop_device.hpp"
#include "tcmu/configfs/config_file.hpp"

namespace wrenn::agent {

namespace {

bool path_exists(const char* path) {
    struct stat st {};
    return ::stat(path, &st) == 0;
}

tcmu::DeviceIdentity identity_of(const OriginSpec& origin) {
    return tcmu::DeviceIdentity{origin.handler, origin.path, origin.size_bytes};
}

}  // namespace

LinuxPlatform::LinuxPlatform(Options options)
    : options_(std::move(options)),
      loops_(loop::make_kernel_image_attacher()),
      tcmu_origins_(tcmu::make_configfs_origin_devices(),
                    tcmu::OriginRegistry::Options{options_.owner_tag, options_.tcmu_policy}) {
    auto mapper = dm::DeviceMapper::open();
    if (mapper) {
        dm_.emplace(std::move(mapper).value());
        support_.device_mapper = true;
    } else {
        support_.device_mapper_reason =
            mapper.error().message() +
            "; load it with 'modprobe dm-snapshot' (the agent must run as root)";
    }
    support_.device_mapper_in_kernel =
        support_.device_mapper || path_exists("/sys/class/misc/device-mapper");
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
    counts.tcmu = tcmu_origins_.attached();
    return counts;
}

Result<dm::DeviceMapper*> LinuxPlatform::mapper() {
    if (!dm_) {
        return Error("device-mapper", ENODEV, support_.device_mapper_reason);
    }
    return &*dm_;
}

Result<TemplateIdentity> LinuxPlatform::inspect_template(const std::string& path) {
    auto image = open_template(path, options_.template_owner);
    if (!image) {
        return std::move(image).error();
    }
    return image->identity;
}

Result<TemplateImage> LinuxPlatform::open_template_version(const std::string& path,
                                                           const TemplateIdentity& expected) {
    return agent::open_template_version(path, options_.template_owner, expected);
}

Result<AttachedOrigin> LinuxPlatform::acquire_origin(const OriginSpec& origin) {
    if (origin.type == OriginSpec::Type::Loop) {
        // The loop is bound to the descriptor checked here, so it serves exactly the image whose
        // identity the sandbox records, whatever the path names a moment later.
        auto image = open_template(origin.path, options_.template_owner);
        if (!image) {
            return std::move(image).error();
        }
        const TemplateIdentity& now = image->identity;
        if (origin.identity &&
            (origin.identity->device != now.device || origin.identity->inode != now.inode)) {
            return Error("open template " + origin.path, ESTALE,
                         "it is another file now than the one the sandbox was made over");
        }
        auto device = loops_.acquire(loop::ImageFile{origin.path, image->fd.get(),
                                                     static_cast<dev_t>(now.device),
                                                     static_cast<ino_t>(now.inode)});
        if (!device) {
            return std::move(device).error();
        }
        return AttachedOrigin{device->device, device->size_bytes};
    }

    auto disk = tcmu_origins_.acquire(identity_of(origin));
    if (!disk) {
        return std::move(disk).error();
    }
    return AttachedOrigin{disk->device, disk->size_bytes};
}

Result<void> LinuxPlatform::check_tcmu_origin(const OriginSpec& origin) {
    const tcmu::OriginPolicy& policy = options_.tcmu_policy;
    if (auto allowed = tcmu::check_origin_request(policy, origin.handler, origin.path); !allowed) {
        return std::move(allowed).error();
    }
    // Before any file is opened: on a kernel without TCMU the config is never touched.
    if (!support_.tcmu) {
        return Error("attach TCMU origin", ENODEV, support_.tcmu_reason);
    }
    auto opened = tcmu::open_allowed_config(policy, origin.path);
    if (!opened) {
        return std::move(opened).error();
    }
    return success();
}

void LinuxPlatform::release_origin(const OriginSpec& origin) {
    if (origin.type == OriginSpec::Type::Loop) {
        if (origin.identity) {
            loops_.release(loop::ImageFile{origin.path, -1,
                                           static_cast<dev_t>(origin.identity->device),
                                           static_cast<ino_t>(origin.identity->inode)}
                               .key());
            return;
        }
        // A record from before identities: the image the path names, as acquire saw it.
        struct stat st {};
        if (::stat(origin.path.c_str(), &st) != 0) {
            spdlog::warn("release template {}: {}", origin.path, describe_errno(errno));
            return;
        }
        loops_.release(loop::ImageFile{origin.path, -1, st.st_dev, st.st_ino}.key());
        return;
    }
    tcmu_origins_.release(identity_of(origin));
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
    auto cow = loop::LoopDevice::attach(cow_path, loop::kCowLoop);
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
    return std::optional<SnapshotInfo>{SnapshotInfo{true, (*info)->open_count, (*info)->suspended}};
}

Result<void> LinuxPlatform::suspend_snapshot(const std::string& id) {
    auto dm = mapper();
    if (!dm) {
        return std::move(dm).error();
    }
    return (*dm)->suspend(dm::device_name(id));
}

Result<void> LinuxPlatform::resume_snapshot(const std::string& id) {
    auto dm = mapper();
    if (!dm) {
        return std::move(dm).error();
    }
    return (*dm)->resume(dm::device_name(id));
}

Result<FreeSpace> LinuxPlatform::free_space(const std::string& dir) {
    struct statvfs fs {};
    if (::statvfs(dir.c_str(), &fs) != 0) {
        return errno_error("statvfs " + dir);
    }
    return FreeSpace{static_cast<std::uint64_t>(fs.f_bavail) * fs.f_frsize,
                     static_cast<std::uint64_t>(fs.f_blocks) * fs.f_frsize};
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
        out.push_back(ListedDevice{std::move(id), owner, device.cow_dev, device.suspended});
    }
    return out;
}

Result<bool> LinuxPlatform::snapshot_over_cow(const ListedDevice& device,
                                              const std::string& cow_path) {
    const std::string what = "check the CoW of " + dm::device_name(device.id);
    if (device.cow_device.empty()) {
        return false;  // no live snapshot table (a create cut short): not over any CoW
    }
    unsigned major = 0, minor = 0;
    if (std::sscanf(device.cow_device.c_str(), "%u:%u", &major, &minor) != 2) {
        return Error(what, EINVAL, "unexpected CoW device \"" + device.cow_device + "\"");
    }
    struct stat cow {};
    if (::stat(cow_path.c_str(), &cow) != 0) {
        if (errno == ENOENT) {
            return false;
        }
        return errno_error("stat " + cow_path).within(what);
    }
    auto loop = loop::LoopDevice::backing_of_device(makedev(major, minor));
    if (!loop) {
        return std::move(loop).error().within(what);
    }
    if (!*loop) {
        return false;  // the CoW device is gone, or not a loop: not one of ours
    }
    return (*loop)->dev == cow.st_dev && (*loop)->ino == cow.st_ino;
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

namespace {

class FlattenCopy : public PendingCopy {
  public:
    explicit FlattenCopy(flatten::CopiedFile copied) : copied_(std::move(copied)) {}
    Result<void> commit() override { return copied_.output.commit(); }
    [[nodiscard]] std::string method() const override {
        return std::string(flatten::to_string(copied_.method));
    }
    [[nodiscard]] std::string path() const override { return copied_.output.temp_path(); }

  private:
    flatten::CopiedFile copied_;
};

}  // namespace

Result<std::unique_ptr<PendingCopy>> LinuxPlatform::copy_cow(
    const std::string& from, const std::string& to,
    std::optional<std::chrono::steady_clock::time_point> deadline) {
    auto copied = flatten::copy_file(from, to, deadline);
    if (!copied) {
        return std::move(copied).error();
    }
    return std::unique_ptr<PendingCopy>(std::make_unique<FlattenCopy>(std::move(copied).value()));
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
                         std::string(flatten::to_string(stats->method)),
                         std::move(stats->changed_chunks), stats->chunk_bytes};
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
        // By inode: the path may name another file by now (a template replaced by rename).
        auto device = loop::LoopDevice::open_existing(status.backing_dev, status.backing_ino,
                                                      status.backing_file, status.read_only);
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

Result<std::size_t> LinuxPlatform::release_loops_of(const std::string& path) {
    auto bound = loop::LoopDevice::list_bound();
    if (!bound) {
        return std::move(bound).error();
    }
    std::size_t released = 0;
    for (const auto& status : *bound) {
        // The kernel shows a deleted backing file's path with " (deleted)" after it.
        if (status.backing_file != path && status.backing_file != path + " (deleted)") {
            continue;
        }
        const std::string key =
            std::to_string(status.backing_dev) + ":" + std::to_string(status.backing_ino);
        if (loops_.references(key) > 0) {
            continue;  // an origin we hold (the caller checked no sandbox uses it)
        }
        auto device = loop::LoopDevice::open_existing(status.backing_dev, status.backing_ino,
                                                      status.backing_file, status.read_only);
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

Result<std::size_t> LinuxPlatform::detach_tcmu_origins(const std::vector<OriginSpec>& origins) {
    std::vector<tcmu::DeviceIdentity> identities;
    for (const auto& origin : origins) {
        identities.push_back(identity_of(origin));
    }
    return tcmu_origins_.detach(identities);
}

Result<std::size_t> LinuxPlatform::detach_unused_tcmu(std::vector<std::string>& problems) {
    if (!support_.tcmu) {
        return std::size_t{0};  // no TCMU in this kernel: no device can exist
    }
    auto swept = tcmu_origins_.detach_unused();
    if (!swept) {
        return std::move(swept).error().within("detach unused TCMU devices");
    }
    for (const Error& left : swept->left) {
        problems.push_back(left.message());
    }
    return swept->detached.size();
}

}  // namespace wrenn::agent
