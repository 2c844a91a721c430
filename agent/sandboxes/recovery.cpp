// Startup recovery and boot cleanup: bringing the table, the records and the kernel back in
// step after the agent (or the host) went away. In its own file because it decides over
// every sandbox at once, where the other operations work on one. Both
// decide on facts only: a device list that cannot be read stops them before any record changes,
// and a device another state dir owns is never touched.
#include <dirent.h>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <map>
#include <set>

#include "agent/sandboxes/operations.hpp"
#include "common/unique_fd.hpp"
#include "flatten/image_copy.hpp"

namespace wrenn::agent {

namespace {

std::string_view describe(dm::DeviceOwner owner) {
    switch (owner) {
        case dm::DeviceOwner::Ours:
            return "ours";
        case dm::DeviceOwner::Legacy:
            return "ours, with the UUID form from before state-dir tags";
        case dm::DeviceOwner::Unmarked:
            return "without a wrenn UUID";
        case dm::DeviceOwner::Foreign:
            return "another state dir's";
    }
    return "unknown";
}

}  // namespace

// flatten/image_copy.cpp writes <templates-dir>/<name>.img.tmp-XXXXXX (mkstemp: six letters
// or digits) and renames it over <name>.img at the end; one left behind is a flatten that was
// killed, which nobody will finish.
bool is_flatten_temp_name(std::string_view file) {
    constexpr std::string_view kMarker = ".img.tmp-";
    const auto at = file.rfind(kMarker);
    return at != std::string_view::npos && is_valid_name(file.substr(0, at)) &&
           flatten::is_pending_output_name(file, file.substr(0, at + 4));  // "<name>.img"
}

namespace {

std::size_t sweep_flatten_temps(const OperationContext& ctx, std::vector<std::string>& problems) {
    const std::string& dir = ctx.options.templates_dir;
    UniqueFd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!dir_fd) {
        if (errno != ENOENT) {
            problems.push_back(errno_error("open templates folder " + dir).message());
        }
        return 0;
    }
    DIR* listing = ::fdopendir(::dup(dir_fd.get()));
    if (listing == nullptr) {
        problems.push_back(errno_error("list templates folder " + dir).message());
        return 0;
    }
    std::size_t removed = 0;
    while (const dirent* e = ::readdir(listing)) {
        const std::string name = e->d_name;
        if (!is_flatten_temp_name(name)) {
            continue;
        }
        // Relative to the folder's descriptor and without following links: only a regular
        // file of ours goes, never what a symlink of that name points at.
        struct stat st {};
        if (::fstatat(dir_fd.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 ||
            !S_ISREG(st.st_mode)) {
            continue;
        }
        if (::unlinkat(dir_fd.get(), name.c_str(), 0) != 0) {
            problems.push_back(errno_error("remove " + dir + "/" + name).message());
            continue;
        }
        ++removed;
        spdlog::info("recover: removed {}/{}, left by a flatten that did not finish", dir, name);
    }
    ::closedir(listing);
    return removed;
}

// Sandboxes made while their template's digest was pending when the agent stopped: the digest
// is recorded now if it was read meanwhile, else read again while the image is that version.
void resume_pending_digests(OperationContext& ctx) {
    std::vector<std::pair<std::string, TemplateIdentity>> versions;
    for (const auto& sb : ctx.table.list()) {
        const auto& id = sb.origin.identity;
        if (sb.origin.type != OriginSpec::Type::Loop || !id || is_blocks_digest(id->digest)) {
            continue;
        }
        const bool seen = std::any_of(versions.begin(), versions.end(), [&](const auto& v) {
            return v.first == sb.origin.path && v.second.same_file_state(*id);
        });
        if (!seen) {
            versions.emplace_back(sb.origin.path, *id);
        }
    }
    for (auto& [path, version] : versions) {
        if (auto digest = ctx.digests.known(path, version)) {
            version.digest = *digest;
            record_digest(ctx, path, version);
        } else if (auto now = ctx.platform.inspect_template(path);
                   now && now->same_file_state(version)) {
            ctx.digests.request(path, version);
        }
    }
}

}  // namespace

Result<RecoveryReport> recover(OperationContext& ctx) {
    RecoveryReport report;
    auto loaded = ctx.store.load();
    if (!loaded) {
        return std::move(loaded).error().within("recover");
    }
    // Facts first: without the device list nothing can be decided, and nothing is changed.
    // Without device-mapper in the kernel no snapshot can exist: an empty list is the fact.
    std::vector<ListedDevice> devices;
    const KernelSupport support = ctx.platform.support();
    if (!support.device_mapper && support.device_mapper_in_kernel) {
        return Error("recover", ENODEV,
                     "device-mapper is in the kernel but cannot be used (" +
                         support.device_mapper_reason +
                         "), so its devices cannot be listed; no record was changed. Make "
                         "/dev/mapper/control usable and start again");
    }
    if (support.device_mapper) {
        auto listed = ctx.platform.list_snapshots();
        if (!listed) {
            return Error("recover", listed.error().code(),
                         listed.error().message() +
                             "; no record was changed. Fix device-mapper access (is this "
                             "root? is dm-snapshot loaded?) and start again");
        }
        devices = std::move(listed).value();
    }
    for (const auto& [name, error] : loaded->unreadable) {
        // Kept as they are: a record we cannot read is not a licence to delete its CoW.
        report.problems.push_back("sandbox folder " + name + " left alone: " + error.message());
    }
    std::map<std::string, const ListedDevice*> live;
    for (const auto& device : devices) {
        live.emplace(device.id, &device);
    }
    std::set<std::string> keep;  // devices not to remove: adopted, or undecided

    for (Sandbox& sb : loaded->sandboxes) {
        // An export killed mid-way left its point-in-time copy: nobody reads it now.
        if (auto removed = ctx.store.remove_export_copies(sb.id); !removed) {
            report.problems.push_back(removed.error().message());
        } else if (*removed > 0) {
            report.temp_files_removed += *removed;
            spdlog::info("sandbox={} op=recover removed {} copy(ies) left by a killed export",
                         sb.id, *removed);
        }
        auto entry = std::make_shared<Entry>(ctx.table.workers());
        const auto device = live.find(sb.id);
        bool over_cow = false;
        bool undecided = false;
        if (device != live.end() && (device->second->owner == dm::DeviceOwner::Ours ||
                                     device->second->owner == dm::DeviceOwner::Legacy)) {
            // From the listing's own query of the table: the kernel is asked once per device.
            auto checked = ctx.platform.snapshot_over_cow(*device->second, sb.cow_path);
            if (checked) {
                over_cow = *checked;
            } else {
                // Not knowing whether the device is this sandbox's, leave both as they are.
                undecided = true;
                keep.insert(sb.id);
                report.problems.push_back("sandbox " + sb.id +
                                          " left as its record says: " + checked.error().message());
            }
        }
        if (over_cow) {
            // Adopt: the device is up over this CoW, so whatever the record says, the sandbox
            // runs. Its origin is up too; take our reference on it again.
            if (device->second->owner == dm::DeviceOwner::Legacy) {
                spdlog::info(
                    "sandbox={} op=recover device has the pre-tag UUID form; taken as ours", sb.id);
            }
            // The template must still be the image the device was made over. If it is not, the
            // device keeps running over the image its loop holds; the sandbox says so, and a
            // later resume answers template_changed until the image is put back.
            auto same_template = verify_template(ctx, sb, "adopt " + sb.id);
            if (!same_template) {
                const std::string problem = same_template.error().error.message();
                spdlog::error("sandbox={} op=recover {}", sb.id, problem);
                report.problems.push_back(problem);
                sb.last_error = problem;
                if (auto written = ctx.store.write_record(sb); !written) {
                    report.problems.push_back(written.error().message());
                }
            } else {
                if (same_template.value() && sb.origin.identity != *same_template.value()) {
                    sb.origin.identity = *same_template.value();
                    if (auto written = ctx.store.write_record(sb); !written) {
                        report.problems.push_back(written.error().message());
                    }
                }
                auto origin = ctx.platform.acquire_origin(sb.origin);
                if (origin) {
                    entry->origin_held = true;
                    sb.origin_device = origin->device;
                } else {
                    report.problems.push_back("adopt " + sb.id + ": " + origin.error().message());
                }
            }
            if (sb.state != SandboxState::Running) {
                spdlog::warn(
                    "sandbox={} op=recover its record said paused but its device is live over "
                    "its CoW: adopted as running",
                    sb.id);
                sb.state = SandboxState::Running;
                sb.device = "/dev/mapper/" + dm::device_name(sb.id);
                sb.updated_at = utc_now();
                if (auto written = ctx.store.write_record(sb); !written) {
                    report.problems.push_back(written.error().message());
                }
            }
            // A device an agent suspended for space (then was killed or restarted) must not
            // stay suspended: the space watcher resumes it once space allows. The listing's
            // query said whether it is.
            if (device->second->suspended) {
                entry->holds[static_cast<std::size_t>(SuspendReason::Space)] = 1;
                ++report.suspended_found;
                spdlog::warn(
                    "sandbox={} op=recover its device is suspended (for space, by an earlier "
                    "agent): its I/O resumes once the state filesystem is above --min-free",
                    sb.id);
            }
            keep.insert(sb.id);
            ++report.adopted;
            spdlog::info("sandbox={} op=recover result=adopted device={}", sb.id, sb.device);
        } else if (sb.state == SandboxState::Running && !undecided) {
            sb.state = SandboxState::Paused;
            sb.device.clear();
            sb.origin_device.clear();
            sb.updated_at = utc_now();
            if (auto written = ctx.store.write_record(sb); !written) {
                report.problems.push_back(written.error().message());
            }
            ++report.paused;
            spdlog::info("sandbox={} op=recover result=paused (its device was gone)", sb.id);
        }
        entry->record = sb;
        ctx.table.adopt(entry);
    }
    for (const auto& device : devices) {
        if (keep.count(device.id) != 0) {
            continue;
        }
        if (device.owner == dm::DeviceOwner::Foreign) {
            ++report.foreign_left;
            spdlog::info("sandbox={} op=recover device is another state dir's; left alone",
                         device.id);
            continue;
        }
        if (auto removed = ctx.platform.remove_snapshot(device.id);
            removed || removed.error().code() == ENXIO) {
            ++report.stale_removed;
            spdlog::info("sandbox={} op=recover result=stale device ({}) removed", device.id,
                         describe(device.owner));
        } else {
            report.problems.push_back("remove stale device: " + removed.error().message());
        }
    }
    for (const auto& id : loaded->unfinished) {
        if (auto removed = ctx.store.remove_sandbox(id); removed) {
            ++report.unfinished_removed;
            spdlog::info("sandbox={} op=recover result=unfinished create removed", id);
        } else {
            report.problems.push_back(removed.error().message());
        }
    }
    // Last, once the adopted sandboxes hold their origins again and the stale devices no
    // longer hold theirs: what is left of ours, nobody uses.
    if (auto swept = ctx.platform.detach_unused_tcmu(report.problems); swept) {
        report.tcmu_detached = *swept;
    } else {
        report.problems.push_back(swept.error().message());
    }
    report.temp_files_removed += sweep_flatten_temps(ctx, report.problems);
    resume_pending_digests(ctx);
    return report;
}

Result<RecoveryReport> cleanup_stale(OperationContext& ctx) {
    RecoveryReport report;
    auto devices = ctx.platform.list_snapshots();
    if (!devices) {
        return Error("cleanup-stale", devices.error().code(),
                     devices.error().message() + "; no record was changed");
    }
    auto loaded = ctx.store.load();
    if (!loaded) {
        return std::move(loaded).error().within("cleanup-stale");
    }
    std::vector<std::string> failed;
    std::set<std::string> still_there;  // ours, and its removal failed
    for (const auto& device : *devices) {
        if (device.owner == dm::DeviceOwner::Foreign) {
            ++report.foreign_left;
            spdlog::info("cleanup-stale: wrenn-{} is another state dir's; left alone", device.id);
            continue;
        }
        if (auto removed = ctx.platform.remove_snapshot(device.id);
            removed || removed.error().code() == ENXIO) {
            ++report.stale_removed;
        } else {
            still_there.insert(device.id);
            failed.push_back(removed.error().message());
        }
    }
    std::vector<OriginSpec> tcmu_origins;
    for (Sandbox& sb : loaded->sandboxes) {
        if (sb.origin.type == OriginSpec::Type::Tcmu) {
            tcmu_origins.push_back(sb.origin);
        }
        // Paused only when its device is really gone: a record that says paused over a live
        // device could neither be paused nor resumed.
        if (sb.state != SandboxState::Running || still_there.count(sb.id) != 0) {
            continue;
        }
        sb.state = SandboxState::Paused;
        sb.device.clear();
        sb.origin_device.clear();
        sb.updated_at = utc_now();
        if (auto written = ctx.store.write_record(sb); !written) {
            failed.push_back(written.error().message());
        } else {
            ++report.paused;
        }
    }
    for (const std::string& dir : {ctx.store.state_dir(), ctx.options.templates_dir}) {
        if (auto released = ctx.platform.release_loops_under(dir); !released) {
            failed.push_back(released.error().message());
        }
    }
    if (auto detached = ctx.platform.detach_tcmu_origins(tcmu_origins); !detached) {
        failed.push_back(detached.error().message());
    }
    // The records name only the origins of sandboxes that still exist; our mark finds the rest.
    if (auto swept = ctx.platform.detach_unused_tcmu(failed); swept) {
        report.tcmu_detached = *swept;
    } else {
        failed.push_back(swept.error().message());
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
