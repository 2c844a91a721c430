#include "dm/snapshot_format.hpp"

#include <cerrno>
#include <charconv>

namespace wrenn::dm {

namespace {

bool is_alnum(char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

// A decimal number that fills all of `text` (no sign, no spaces).
bool parse_u64(std::string_view text, std::uint64_t& out) {
    if (text.empty()) {
        return false;
    }
    const char* end = text.data() + text.size();
    auto [ptr, ec] = std::from_chars(text.data(), end, out);
    return ec == std::errc() && ptr == end;
}

Error status_error(std::string_view params) {
    return Error("parse snapshot status", EINVAL, "unexpected \"" + std::string(params) + "\"");
}

}  // namespace

bool is_valid_sandbox_id(std::string_view id) {
    if (id.empty() || id.size() > 64 || !is_alnum(id.front())) {
        return false;
    }
    for (char c : id) {
        if (!is_alnum(c) && c != '_' && c != '-') {
            return false;
        }
    }
    return true;
}

std::string device_name(std::string_view id) {
    return std::string(kNamePrefix) + std::string(id);
}

std::string device_uuid(std::string_view tag, std::string_view id) {
    return std::string(kUuidPrefix) + std::string(tag) + "-" + std::string(id);
}

std::string legacy_device_uuid(std::string_view id) {
    return std::string(kUuidPrefix) + std::string(id);
}

DeviceOwner classify_device_uuid(std::string_view uuid, std::string_view tag, std::string_view id) {
    if (uuid.substr(0, kUuidPrefix.size()) != kUuidPrefix) {
        return DeviceOwner::Unmarked;
    }
    if (uuid == device_uuid(tag, id)) {
        return DeviceOwner::Ours;
    }
    // Compared whole, with the id from the device's name: a tagged UUID of another state dir
    // never equals kUuidPrefix + the id, whatever the id looks like.
    if (uuid == legacy_device_uuid(id)) {
        return DeviceOwner::Legacy;
    }
    return DeviceOwner::Foreign;
}

std::string snapshot_table_params(std::string_view origin_dev, std::string_view cow_dev) {
    std::string out;
    out.reserve(origin_dev.size() + cow_dev.size() + 8);
    out += origin_dev;
    out += ' ';
    out += cow_dev;
    out += " P ";
    out += std::to_string(kChunkSectors);
    return out;
}

Result<SnapshotTableDevices> parse_snapshot_table(std::string_view params) {
    const auto first = params.find(' ');
    const auto second = first == std::string_view::npos ? first : params.find(' ', first + 1);
    if (first == std::string_view::npos || second == std::string_view::npos || first == 0 ||
        second == first + 1) {
        return Error("parse snapshot table", EINVAL,
                     "unexpected table \"" + std::string(params) + "\"");
    }
    return SnapshotTableDevices{std::string(params.substr(0, first)),
                                std::string(params.substr(first + 1, second - first - 1))};
}

Result<SnapshotStatus> parse_snapshot_status(std::string_view params) {
    // The kernel prints exactly one of these forms; tolerate surrounding blanks only.
    while (!params.empty() && (params.front() == ' ' || params.front() == '\n')) {
        params.remove_prefix(1);
    }
    while (!params.empty() && (params.back() == ' ' || params.back() == '\n')) {
        params.remove_suffix(1);
    }
    using State = SnapshotStatus::State;
    if (params == "Invalid") {
        return SnapshotStatus{State::Invalid};
    }
    if (params == "Overflow") {
        return SnapshotStatus{State::Overflow};
    }
    if (params == "Merge failed") {
        return SnapshotStatus{State::MergeFailed};
    }
    if (params == "Unknown") {
        return SnapshotStatus{State::Unknown};
    }

    SnapshotStatus status{State::Active};
    const auto slash = params.find('/');
    if (slash == std::string_view::npos) {
        return status_error(params);
    }
    std::string_view total = params.substr(slash + 1);
    std::string_view metadata;
    if (const auto space = total.find(' '); space != std::string_view::npos) {
        metadata = total.substr(space + 1);
        total = total.substr(0, space);
        if (!parse_u64(metadata, status.metadata_sectors)) {
            return status_error(params);
        }
    }
    if (!parse_u64(params.substr(0, slash), status.allocated_sectors) ||
        !parse_u64(total, status.total_sectors) ||
        status.allocated_sectors > status.total_sectors) {
        return status_error(params);
    }
    return status;
}

std::uint64_t persistent_store_allocated_bytes(std::uint64_t exceptions) {
    // The header, the first area's metadata chunk, the data chunks, and one more metadata chunk
    // for each full area.
    return (2 + exceptions + exceptions / kExceptionsPerArea) * kChunkBytes;
}

std::uint64_t cow_size_for_origin(std::uint64_t origin_bytes) {
    // The last origin chunk may be partial; it still takes a whole CoW chunk.
    const std::uint64_t data_chunks = (origin_bytes + kChunkBytes - 1) / kChunkBytes;
    const std::uint64_t metadata_chunks =
        (data_chunks + kExceptionsPerArea - 1) / kExceptionsPerArea;
    // Why a spare area: when an area's last exception commits, dm-snap-persistent zeroes the
    // NEXT area's metadata chunk (persistent_commit_exception -> zero_disk_area). With a store
    // sized exactly to the data, that write lands past the end, fails, and invalidates the
    // snapshot. One full spare area covers it with room to spare (1 MiB at 4 KiB chunks).
    const std::uint64_t chunks = 1 + metadata_chunks + data_chunks + kChunksPerArea;
    return chunks * kChunkBytes;
}

}  // namespace wrenn::dm
