#include "agent/table/checks.hpp"

#include <sys/stat.h>

#include <cerrno>

#include "dm/snapshot_format.hpp"

namespace wrenn::agent {

bool is_valid_name(std::string_view name) {
    return dm::is_valid_sandbox_id(name);
}

std::optional<Failure> check_name(std::string_view name, std::string_view field,
                                  const std::string& what) {
    if (is_valid_name(name)) {
        return std::nullopt;
    }
    return failure(FailureKind::InvalidRequest, what, 0,
                   std::string(field) + " must match " + std::string(kNameRule));
}

std::optional<Failure> check_kernel(Platform& platform, const std::string& what) {
    const KernelSupport support = platform.support();
    if (!support.device_mapper) {
        return Failure{
            FailureKind::Unavailable,
            Error("device-mapper is not usable", 0, support.device_mapper_reason).within(what)};
    }
    if (!support.loop) {
        return Failure{FailureKind::Unavailable,
                       Error("loop devices are not usable", 0, support.loop_reason).within(what)};
    }
    return std::nullopt;
}

std::optional<Failure> check_space(SpaceWatcher* space, const std::string& what) {
    if (space == nullptr) {
        return std::nullopt;
    }
    if (auto refused = space->refuse_new_work()) {
        return failure(FailureKind::InsufficientStorage, what, ENOSPC, *refused);
    }
    return std::nullopt;
}

Result<SpaceReservation, Failure> reserve_space(SpaceWatcher* space, std::uint64_t bytes,
                                                const std::string& what) {
    if (space == nullptr) {
        return SpaceReservation{};
    }
    auto reserved = space->reserve(bytes);
    if (!reserved) {
        return failure(FailureKind::InsufficientStorage, what, ENOSPC, std::move(reserved).error());
    }
    return std::move(reserved).value();
}

std::uint64_t allocated_bytes_of(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 ? static_cast<std::uint64_t>(st.st_blocks) * 512 : 0;
}

std::optional<Failure> check_tcmu(Platform& platform, const OriginSpec& origin,
                                  const std::string& what) {
    if (origin.type != OriginSpec::Type::Tcmu) {
        return std::nullopt;
    }
    auto allowed = platform.check_tcmu_origin(origin);
    if (allowed) {
        return std::nullopt;
    }
    const int code = allowed.error().code();
    const FailureKind kind = code == EACCES || code == EPERM    ? FailureKind::TcmuNotAllowed
                             : code == EINVAL || code == ENOENT ? FailureKind::InvalidRequest
                             : code == ENODEV                   ? FailureKind::Unavailable
                                                                : FailureKind::Internal;
    return Failure{kind, std::move(allowed).error().within(what)};
}

std::optional<Failure> check_cow_usable(Platform& platform, const Sandbox& sb,
                                        const std::string& what) {
    static constexpr std::string_view kMarked =
        "the kernel marked this CoW invalid (an I/O error, or a full CoW); its data cannot be "
        "used as a snapshot again";
    if (sb.state == SandboxState::Running) {
        // Not knowing (a status that cannot be read) is no reason to refuse.
        auto usage = platform.snapshot_usage(sb.id);
        if (usage && usage->state != SnapshotUsage::State::Active) {
            return failure(FailureKind::SnapshotInvalid, what, 0, std::string(kMarked));
        }
        return std::nullopt;
    }
    auto valid = platform.cow_store_valid(sb.cow_path, sb.origin_size_bytes);
    if (!valid) {
        // errno 0: the file is not an exception store for this origin; else its I/O failed.
        const FailureKind kind =
            valid.error().code() == 0 ? FailureKind::SnapshotInvalid : FailureKind::Internal;
        return Failure{kind, std::move(valid).error().within(what)};
    }
    if (!*valid) {
        return failure(FailureKind::SnapshotInvalid, what, 0, std::string(kMarked));
    }
    return std::nullopt;
}

std::optional<Failure> check_no_live_device(Platform& platform, const std::string& id,
                                            const std::string& what, std::string_view then) {
    auto info = platform.snapshot_info(id);
    if (!info) {
        return internal(std::move(info).error().within(what));
    }
    if (info->has_value()) {
        return failure(FailureKind::InvalidState, what, 0,
                       "a device " + dm::device_name(id) +
                           " is live for this sandbox, so its CoW may still change; resume and "
                           "pause it, or remove the device, then " +
                           std::string(then));
    }
    return std::nullopt;
}

Result<bool> held_by_another_state_dir(Platform& platform, const std::string& id) {
    auto info = platform.snapshot_info(id);
    if (!info) {
        return std::move(info).error();
    }
    if (!info->has_value()) {
        return false;
    }
    // Rare (a paused sandbox with a live device of its name): the whole list tells the owner.
    auto devices = platform.list_snapshots();
    if (!devices) {
        return std::move(devices).error();
    }
    for (const auto& device : *devices) {
        if (device.id == id) {
            return device.owner == dm::DeviceOwner::Foreign;
        }
    }
    return false;
}

Failure removal_failure(Error error) {
    const FailureKind kind =
        error.code() == EBUSY ? FailureKind::DeviceBusy : FailureKind::Internal;
    return Failure{kind, std::move(error)};
}

}  // namespace wrenn::agent
