#pragma once

// The one file of flatten/ that talks to the kernel: opening images, FICLONE,
// copy_file_range, SEEK_DATA/SEEK_HOLE, pread/pwrite, fsync and the no-replace rename.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.hpp"
#include "common/unique_fd.hpp"
#include "flatten/exception_store.hpp"

namespace wrenn::flatten {

// How the origin's bytes reached the output, fastest first.
enum class CopyMethod { Reflink, CopyFileRange, ReadWrite };
std::string_view to_string(CopyMethod);

// A file or block device opened O_RDONLY|O_CLOEXEC, with its size in bytes.
struct OpenedImage {
    UniqueFd fd;
    std::uint64_t size = 0;
    bool block_device = false;
};
// Opens a regular file or a block device (size from BLKGETSIZE64); anything else is EINVAL.
Result<OpenedImage> open_read_only(const std::string& path);

// A ReadAt over pread(fd); errors name path. fd must outlive the reader.
ReadAt pread_reader(int fd, std::string path);
// A WriteAt over pwrite(fd) (whole pieces, EINTR retried); errors name path. fd must outlive it.
WriteAt pwrite_writer(int fd, std::string path);
// ftruncate: sets the size of the file open as fd (a new file: all of it a hole).
Result<void> set_file_size(int fd, std::uint64_t bytes, const std::string& path);

// True when file (a name, no folder) is a PendingOutput's temporary name for the final name
// `final_name`: final_name + ".tmp-" + the six letters or digits mkostemp chose. Left behind
// only by a process killed before commit(), so whoever owns final_name may remove it.
bool is_pending_output_name(std::string_view file, std::string_view final_name);

// A new, empty output file <out>.tmp-XXXXXX beside out. Owns the temp file: the destructor
// removes it unless commit() succeeded, so a failed flatten (or import) leaves no file behind.
class PendingOutput {
  public:
    // EEXIST when out already exists (checked again, atomically, at commit). mode: the
    // finished file's; 0444 for an image (a template), 0600 for a CoW.
    static Result<PendingOutput> create(const std::string& out, unsigned mode = 0444);

    PendingOutput(PendingOutput&&) noexcept;
    PendingOutput& operator=(PendingOutput&&) = delete;
    PendingOutput(const PendingOutput&) = delete;
    PendingOutput& operator=(const PendingOutput&) = delete;
    ~PendingOutput();

    [[nodiscard]] int fd() const noexcept { return fd_.get(); }
    [[nodiscard]] const std::string& temp_path() const noexcept { return temp_; }
    // The name commit() gives the file.
    [[nodiscard]] const std::string& final_path() const noexcept { return out_; }

    // fsync the file, rename it to out without ever replacing an existing out (EEXIST), fsync
    // the directory so that the name survives a crash too. Not `durable`: the rename only, for
    // a file whose reader checks it (after a crash the name may be missing, or its data).
    Result<void> commit(bool durable = true);

  private:
    PendingOutput(UniqueFd fd, std::string temp, std::string out);
    UniqueFd fd_;
    std::string temp_;
    std::string out_;
    bool committed_ = false;
};

// Copies origin into the empty out_fd, sized to origin.size, keeping it sparse: FICLONE when
// the filesystem can, else copy_file_range over the data segments (SEEK_DATA/SEEK_HOLE), else
// read/write that skips all-zero blocks. A block device is read in large blocks (ReadWrite).
// `fastest` lets tests start lower in that list.
// With a deadline, a copy that passes it stops with ETIMEDOUT (checked between pieces of at
// most 64 MiB; FICLONE is one call and is not interrupted).
using Deadline = std::optional<std::chrono::steady_clock::time_point>;
Result<CopyMethod> copy_image(const OpenedImage& origin, int out_fd,
                              CopyMethod fastest = CopyMethod::Reflink, Deadline deadline = {});

// Writes each exception's CoW chunk over its origin chunk in out_fd, cut where the snapshot's
// view of the origin ends: origin_size rounded down to whole 512-byte sectors. Exceptions may come
// in any order; the CoW is read in new_chunk order in large windows and runs contiguous on both
// sides are written at once. Returns the number of chunks applied.
Result<std::size_t> apply_exceptions(int cow_fd, int out_fd,
                                     const std::vector<Exception>& exceptions,
                                     std::uint64_t chunk_bytes, std::uint64_t origin_size);

}  // namespace wrenn::flatten
