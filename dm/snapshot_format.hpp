#pragma once

// Pure functions for wrenn's dm-snapshot devices: names, the table line, the status line and the
// size of a copy-on-write store. No kernel calls here; everything is unit-tested.

#include <cstdint>
#include <string>
#include <string_view>

#include "common/result.hpp"

namespace wrenn::dm {

inline constexpr std::string_view kNamePrefix = "wrenn-";       // device names
inline constexpr std::string_view kUuidPrefix = "WRENN-SNAP-";  // dm UUID marks a device as ours
inline constexpr std::uint32_t kChunkSectors = 8;               // 4 KiB chunks

inline constexpr std::uint64_t kSectorBytes = 512;
inline constexpr std::uint64_t kChunkBytes = kChunkSectors * kSectorBytes;
// dm-snap-persistent: a metadata chunk holds chunk_bytes / 16 exceptions (le64 old, le64 new).
inline constexpr std::uint64_t kExceptionsPerArea = kChunkBytes / 16;
// An area is its metadata chunk followed by the data chunks it indexes.
inline constexpr std::uint64_t kChunksPerArea = 1 + kExceptionsPerArea;

// [A-Za-z0-9][A-Za-z0-9_-]{0,63}: safe as part of a dm name, a dm UUID and a file name.
bool is_valid_sandbox_id(std::string_view id);

std::string device_name(std::string_view id);  // "wrenn-" + id
// kUuidPrefix + tag + "-" + id: the tag names the state dir that owns the device (agents with
// different state dirs share the host's device names). With a 16-character tag and a 64-character
// id this is 92 characters, well inside DM_UUID_LEN (129 with the NUL).
std::string device_uuid(std::string_view tag, std::string_view id);
// kUuidPrefix + id: the form before state dirs had tags.
std::string legacy_device_uuid(std::string_view id);

// Whose a wrenn-<id> device is, from its dm UUID and the tag of the asking state dir.
enum class DeviceOwner {
    Ours,      // our tag
    Legacy,    // the pre-tag form: taken as ours (it predates any second state dir's tags)
    Unmarked,  // no wrenn UUID at all: made by hand or by the old exec way, stale by definition
    Foreign,   // a wrenn UUID that is not ours: another state dir's, left alone
};
DeviceOwner classify_device_uuid(std::string_view uuid, std::string_view tag, std::string_view id);

// The snapshot target's parameters: "<origin> <cow> P 8" (persistent store, 4 KiB chunks).
std::string snapshot_table_params(std::string_view origin_dev, std::string_view cow_dev);

// The origin and CoW devices ("major:minor") of a live snapshot table's parameters, as the kernel
// prints them: "<origin> <cow> P <chunk>". Anything else is an EINVAL error.
struct SnapshotTableDevices {
    std::string origin;
    std::string cow;
};
Result<SnapshotTableDevices> parse_snapshot_table(std::string_view params);

// What the snapshot target reports for STATUS.
struct SnapshotStatus {
    enum class State { Active, Invalid, Overflow, MergeFailed, Unknown };
    State state;
    std::uint64_t allocated_sectors = 0, total_sectors = 0, metadata_sectors = 0;
};

// Parses the snapshot target's status line (drivers/md/dm-snap.c snapshot_status):
// "<allocated>/<total> <metadata>" (also the pre-1.8 form without <metadata>), or one of
// "Invalid", "Overflow", "Merge failed", "Unknown". Anything else is an EINVAL error.
Result<SnapshotStatus> parse_snapshot_status(std::string_view params);

// CoW size (bytes) so that rewriting every chunk of the origin can never overflow a persistent
// snapshot: header chunk + one metadata chunk per 256 data chunks + all data chunks + one spare
// area (see KERNEL-NOTES), rounded to the chunk size.
std::uint64_t cow_size_for_origin(std::uint64_t origin_bytes);

// What the kernel's status reports as allocated (its next free chunk, in bytes) for a persistent
// store of kChunkBytes chunks holding `exceptions` chunks laid out as the kernel lays them out
// (header, then each metadata chunk followed by its kExceptionsPerArea data chunks), once
// loaded: read_exceptions leaves next_free past the last data chunk, and past a metadata chunk
// it would land on (skip_metadata in dm-snap-persistent.c).
std::uint64_t persistent_store_allocated_bytes(std::uint64_t exceptions);

}  // namespace wrenn::dm
