#pragma once

// Flattening a paused sandbox: origin image + the CoW file of its removed dm-snapshot ->
// one standalone image, without device-mapper (the exception store is read directly).

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.hpp"
#include "flatten/image_copy.hpp"

namespace wrenn::flatten {

struct FlattenStats {
    std::uint64_t size_bytes;
    std::size_t chunks_applied;
    CopyMethod method;
    // The origin chunks taken from the CoW (sorted), of chunk_bytes each: where the output
    // differs from the origin.
    std::vector<std::uint64_t> changed_chunks;
    std::uint64_t chunk_bytes = 0;
    // Wall time of each phase: read and check the store, copy the origin, apply the chunks,
    // fsync + rename + fsync the directory.
    std::chrono::microseconds check{}, copy{}, apply{}, commit{};
};

// "check 1.2 ms, copy 3.4 ms, apply 5.6 ms, fsync+rename 7.8 ms": the phases, for logs.
std::string describe_phases(const FlattenStats& stats);

// origin: a regular file or a block device. The CoW's store is read and checked in full before
// any output exists. Writes <out>.tmp-XXXXXX, fsyncs, renames to out (never overwriting an
// existing out: EEXIST error), fsyncs the directory. On any error, no output file remains.
Result<FlattenStats> flatten(const std::string& origin, const std::string& cow,
                             const std::string& out);

// A point-in-time copy of the regular file `from` (a paused or suspended sandbox's CoW), made
// as a new <out>.tmp-XXXXXX and kept sparse: FICLONE where the filesystem can (XFS, btrfs: no
// data moves), else copy_file_range over its data ranges. Only the copy is done here, so that a
// caller holding a device suspended can let it go before the fsync: commit() the output to
// name it durably; dropped uncommitted, it is removed. Past `deadline`: ETIMEDOUT.
struct CopiedFile {
    PendingOutput output;
    CopyMethod method;
};
Result<CopiedFile> copy_file(const std::string& from, const std::string& out, Deadline deadline);

}  // namespace wrenn::flatten
