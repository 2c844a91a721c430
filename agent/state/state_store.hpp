#pragma once

#include <string>
#include <utility>
#include <vector>

#include "agent/state/sandbox.hpp"
#include "common/result.hpp"

namespace wrenn::agent {

// Owns the on-disk layout under the state dir:
//   <state-dir>/sandboxes/<id>/sandbox.json   the record, replaced atomically at every change
//   <state-dir>/sandboxes/<id>/rootfs.cow     the sparse CoW file
// A sandbox folder without a sandbox.json is a create that never finished (the record is
// written last), so it holds nothing anyone was promised and may be removed.
class StateStore {
  public:
    static Result<StateStore> open(std::string state_dir);

    [[nodiscard]] const std::string& state_dir() const { return state_dir_; }
    [[nodiscard]] std::string sandboxes_dir() const;
    [[nodiscard]] std::string sandbox_dir(std::string_view id) const;
    [[nodiscard]] std::string record_path(std::string_view id) const;
    [[nodiscard]] std::string cow_path(std::string_view id) const;
    // Where a running sandbox's export copies its CoW (only ever under a temporary name).
    [[nodiscard]] std::string export_copy_path(std::string_view id) const;

    // Makes the sandbox's folder (EEXIST if it is there) and its sparse CoW file of `size` bytes.
    Result<void> create_sandbox_files(std::string_view id, std::uint64_t cow_size) const;
    // temp file, fsync, rename over sandbox.json, fsync of the folder.
    Result<void> write_record(const Sandbox& sandbox) const;
    // Record first (so a crash in between leaves an unfinished folder, not a record without
    // a CoW), then the CoW, then the folder. Missing pieces are not an error.
    Result<void> remove_sandbox(std::string_view id) const;
    // Removes the point-in-time copies an export killed mid-way left in a sandbox's folder
    // (export.cow.tmp-XXXXXX): nothing reads them once the agent is gone. Returns how many.
    Result<std::size_t> remove_export_copies(std::string_view id) const;
    // fsync of a file of ours (a CoW after its device went): its data is on disk on return.
    Result<void> sync_file(const std::string& path) const;
    // An empty sandbox folder (0700) for a fork, whose CoW is copied in; EEXIST when taken.
    Result<void> create_sandbox_dir(std::string_view id) const;
    // Whether `dir` is on the state dir's filesystem (false when either cannot be stat'ed).
    [[nodiscard]] bool same_filesystem(const std::string& dir) const;
    // Bytes the CoW file really occupies on disk (st_blocks), for a paused sandbox.
    [[nodiscard]] std::uint64_t allocated_bytes(const std::string& path) const;

    struct Loaded {
        std::vector<Sandbox> sandboxes;
        std::vector<std::string> unfinished;                    // folders without a record
        std::vector<std::pair<std::string, Error>> unreadable;  // records we cannot parse: kept
    };
    [[nodiscard]] Result<Loaded> load() const;

  private:
    explicit StateStore(std::string state_dir) : state_dir_(std::move(state_dir)) {}
    std::string state_dir_;
};

// Writes `data` to `path` atomically: a temp file beside it, fsync, rename, fsync of the folder.
// Not `durable`: no fsync, for a cache whose every file is checked when read (after a crash it
// may be the old file, or unreadable, never a mix).
Result<void> write_file_atomically(const std::string& path, std::string_view data,
                                   bool durable = true);

}  // namespace wrenn::agent
