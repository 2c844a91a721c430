#include "flatten/image_copy.hpp"

#include <fcntl.h>
#include <linux/fs.h>
#include <spdlog/spdlog.h>
#include <stdio.h>  // renameat2 (glibc 2.28+)
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <utility>

namespace wrenn::flatten {
namespace {

// Large transfers: the kernel does the readahead, we pay the syscall once per block.
constexpr std::size_t kCopyBlock = 4u << 20;
// Granularity of the zero test: an all-zero 4 KiB block is left as a hole.
constexpr std::size_t kZeroBlock = 4096;

Error at(const char* what, const std::string& path, std::uint64_t offset) {
    return errno_error(std::string(what) + " " + path + " at byte " + std::to_string(offset));
}

// Errors that mean "this filesystem (pair) cannot do that", never "the copy is broken".
bool unsupported(int code) {
    return code == EOPNOTSUPP || code == ENOTTY || code == EXDEV || code == EINVAL ||
           code == ENOSYS || code == ENOTSUP;
}

Result<std::size_t> pread_full(int fd, std::byte* buf, std::size_t len, std::uint64_t offset,
                               const char* name) {
    std::size_t done = 0;
    while (done < len) {
        ssize_t n = ::pread(fd, buf + done, len - done, static_cast<off_t>(offset + done));
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return at("read", name, offset + done);
        }
        if (n == 0) {
            break;
        }
        done += static_cast<std::size_t>(n);
    }
    return done;
}

Result<void> pwrite_full(int fd, const std::byte* buf, std::size_t len, std::uint64_t offset) {
    std::size_t done = 0;
    while (done < len) {
        ssize_t n = ::pwrite(fd, buf + done, len - done, static_cast<off_t>(offset + done));
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return at("write", "the output", offset + done);
        }
        done += static_cast<std::size_t>(n);
    }
    return success();
}

bool all_zero(const std::byte* p, std::size_t n) {
    return n == 0 || (p[0] == std::byte{0} && std::memcmp(p, p + 1, n - 1) == 0);
}

struct Segment {
    std::uint64_t offset;
    std::uint64_t length;
};

// The data segments of a regular file (SEEK_DATA/SEEK_HOLE); the whole range where the
// filesystem cannot tell.
Result<std::vector<Segment>> data_segments(int fd, std::uint64_t size) {
    std::vector<Segment> out;
    std::uint64_t pos = 0;
    while (pos < size) {
        off_t data = ::lseek(fd, static_cast<off_t>(pos), SEEK_DATA);
        if (data < 0) {
            if (errno == ENXIO) {
                break;  // only a hole is left
            }
            if (pos == 0 && unsupported(errno)) {
                return std::vector<Segment>{{0, size}};
            }
            return errno_error("find data (SEEK_DATA) in the origin at byte " +
                               std::to_string(pos));
        }
        off_t hole = ::lseek(fd, data, SEEK_HOLE);
        if (hole < 0) {
            return errno_error("find a hole (SEEK_HOLE) in the origin at byte " +
                               std::to_string(data));
        }
        const auto end = std::min<std::uint64_t>(static_cast<std::uint64_t>(hole), size);
        if (static_cast<std::uint64_t>(data) >= end) {
            break;
        }
        out.push_back({static_cast<std::uint64_t>(data), end - static_cast<std::uint64_t>(data)});
        pos = end;
    }
    return out;
}

struct FreeDeleter {
    void operator()(void* p) const noexcept { std::free(p); }
};
using Buffer = std::unique_ptr<std::byte[], FreeDeleter>;

Result<Buffer> allocate(std::size_t bytes) {
    void* p = nullptr;
    if (int rc = ::posix_memalign(&p, 4096, bytes); rc != 0) {
        return Error("allocate a " + std::to_string(bytes >> 20) + " MiB copy buffer", rc);
    }
    return Buffer(static_cast<std::byte*>(p));
}

// Copies [offset, offset + length) with pread/pwrite, writing only the 4 KiB blocks that are
// not all zero, so holes (and zeroed blocks of a block device) stay holes in the output.
Result<void> copy_skipping_zeros(int in, int out, std::uint64_t offset, std::uint64_t length,
                                 std::byte* buf) {
    const std::uint64_t end = offset + length;
    while (offset < end) {
        const auto want =
            static_cast<std::size_t>(std::min<std::uint64_t>(kCopyBlock, end - offset));
        auto got = pread_full(in, buf, want, offset, "the origin");
        if (!got) {
            return std::move(got).error();
        }
        if (*got < want) {
            return Error("read the origin at byte " + std::to_string(offset + *got), EIO,
                         "it ended before its size of " + std::to_string(end) + " bytes");
        }
        std::size_t i = 0;
        while (i < want) {
            const std::size_t n = std::min(kZeroBlock, want - i);
            if (all_zero(buf + i, n)) {
                i += n;
                continue;
            }
            std::size_t j = i + n;  // extend the run over the following non-zero blocks
            while (j < want) {
                const std::size_t m = std::min(kZeroBlock, want - j);
                if (all_zero(buf + j, m)) {
                    break;
                }
                j += m;
            }
            if (auto w = pwrite_full(out, buf + i, j - i, offset + i); !w) {
                return w;
            }
            i = j;
        }
        offset += want;
    }
    return success();
}

}  // namespace

std::string_view to_string(CopyMethod method) {
    switch (method) {
        case CopyMethod::Reflink:
            return "reflink";
        case CopyMethod::CopyFileRange:
            return "copy_file_range";
        case CopyMethod::ReadWrite:
            return "read/write";
    }
    return "unknown";
}

Result<OpenedImage> open_read_only(const std::string& path) {
    OpenedImage image;
    image.fd = UniqueFd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!image.fd) {
        return errno_error("open " + path);
    }
    struct stat st {};
    if (::fstat(image.fd.get(), &st) != 0) {
        return errno_error("stat " + path);
    }
    if (S_ISREG(st.st_mode)) {
        image.size = static_cast<std::uint64_t>(st.st_size);
    } else if (S_ISBLK(st.st_mode)) {
        std::uint64_t bytes = 0;
        if (::ioctl(image.fd.get(), BLKGETSIZE64, &bytes) != 0) {
            return errno_error("get the size of block device " + path);
        }
        image.size = bytes;
        image.block_device = true;
    } else {
        return Error("open " + path, EINVAL, "not a regular file or a block device");
    }
    return image;
}

ReadAt pread_reader(int fd, std::string path) {
    return [fd, path = std::move(path)](std::uint64_t offset,
                                        std::span<std::byte> buf) -> Result<std::size_t> {
        for (;;) {
            ssize_t n = ::pread(fd, buf.data(), buf.size(), static_cast<off_t>(offset));
            if (n >= 0) {
                return static_cast<std::size_t>(n);
            }
            if (errno != EINTR) {
                return at("read", path, offset);
            }
        }
    };
}

WriteAt pwrite_writer(int fd, std::string path) {
    return [fd, path = std::move(path)](std::uint64_t offset,
                                        std::span<const std::byte> bytes) -> Result<void> {
        std::size_t done = 0;
        while (done < bytes.size()) {
            ssize_t n = ::pwrite(fd, bytes.data() + done, bytes.size() - done,
                                 static_cast<off_t>(offset + done));
            if (n < 0) {
                if (errno == EINTR) {
                    continue;
                }
                return at("write", path, offset + done);
            }
            done += static_cast<std::size_t>(n);
        }
        return success();
    };
}

Result<void> set_file_size(int fd, std::uint64_t bytes, const std::string& path) {
    if (::ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
        return errno_error("size " + path + " to " + std::to_string(bytes) + " bytes");
    }
    return success();
}

PendingOutput::PendingOutput(UniqueFd fd, std::string temp, std::string out)
    : fd_(std::move(fd)), temp_(std::move(temp)), out_(std::move(out)) {}

PendingOutput::PendingOutput(PendingOutput&& other) noexcept
    : fd_(std::move(other.fd_)),
      temp_(std::exchange(other.temp_, {})),
      out_(std::move(other.out_)),
      committed_(other.committed_) {}

PendingOutput::~PendingOutput() {
    if (!committed_ && !temp_.empty() && ::unlink(temp_.c_str()) != 0) {
        spdlog::warn("flatten: cannot remove the unfinished output {}: {}", temp_,
                     describe_errno(errno));
    }
}

bool is_pending_output_name(std::string_view file, std::string_view final_name) {
    constexpr std::string_view kTemp = ".tmp-";
    if (file.size() != final_name.size() + kTemp.size() + 6 || !file.starts_with(final_name) ||
        file.substr(final_name.size(), kTemp.size()) != kTemp) {
        return false;
    }
    for (const char c : file.substr(final_name.size() + kTemp.size())) {
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))) {
            return false;
        }
    }
    return true;
}

Result<PendingOutput> PendingOutput::create(const std::string& out, unsigned mode) {
    struct stat st {};
    if (::lstat(out.c_str(), &st) == 0) {
        return Error("create " + out, EEXIST);
    }
    if (errno != ENOENT) {
        return errno_error("create " + out);
    }
    std::string temp = out + ".tmp-XXXXXX";
    UniqueFd fd(::mkostemp(temp.data(), O_CLOEXEC));
    if (!fd) {
        return errno_error("create a temporary file beside " + out);
    }
    PendingOutput pending(std::move(fd), std::move(temp), out);
    // mkostemp makes 0600. A finished image is a template: readable by all and writable by
    // none, so that nothing rewrites it in place under the sandboxes made over it.
    if (mode != 0600 && ::fchmod(pending.fd(), static_cast<mode_t>(mode)) != 0) {
        return errno_error("chmod " + pending.temp_);
    }
    return pending;
}

Result<void> PendingOutput::commit(bool durable) {
    if (durable && ::fsync(fd_.get()) != 0) {
        return errno_error("fsync " + temp_);
    }
    // RENAME_NOREPLACE fails with EEXIST instead of replacing an out that appeared meanwhile.
    if (::renameat2(AT_FDCWD, temp_.c_str(), AT_FDCWD, out_.c_str(), RENAME_NOREPLACE) != 0) {
        if (!unsupported(errno)) {
            return errno_error("rename " + temp_ + " to " + out_);
        }
        // A filesystem without RENAME_NOREPLACE: link(2) never replaces either.
        if (::link(temp_.c_str(), out_.c_str()) != 0) {
            return errno_error("link " + temp_ + " to " + out_);
        }
        if (::unlink(temp_.c_str()) != 0) {
            Error e = errno_error("remove " + temp_ + " after linking it to " + out_);
            ::unlink(out_.c_str());
            return e;
        }
    }
    committed_ = true;
    if (!durable) {
        return success();
    }
    const auto slash = out_.rfind('/');
    const std::string dir =
        slash == std::string::npos ? "." : (slash == 0 ? "/" : out_.substr(0, slash));
    UniqueFd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!dir_fd || ::fsync(dir_fd.get()) != 0) {
        Error e = errno_error("fsync directory " + dir);
        // The name may not survive a crash: do not leave an output the caller was told failed.
        ::unlink(out_.c_str());
        return e;
    }
    return success();
}

namespace {

// XFS unshares a reflinked extent in units of the file's CoW extent size (32 blocks by
// default) on the first write to it. Flatten then writes scattered 4 KiB chunks, so without a
// 4 KiB hint each one copies and allocates 128 KiB. Only a hint: other filesystems refuse it.
void hint_small_cow_extents(int fd) {
    struct fsxattr fsx {};
    if (::ioctl(fd, FS_IOC_FSGETXATTR, &fsx) != 0) {
        return;
    }
    fsx.fsx_xflags |= FS_XFLAG_COWEXTSIZE;
    fsx.fsx_cowextsize = 4096;
    if (::ioctl(fd, FS_IOC_FSSETXATTR, &fsx) != 0) {
        spdlog::debug("flatten: no CoW extent size hint ({})", describe_errno(errno));
    }
}

}  // namespace

Result<CopyMethod> copy_image(const OpenedImage& origin, int out_fd, CopyMethod fastest,
                              Deadline deadline) {
    const int in = origin.fd.get();
    auto past_deadline = [&](std::uint64_t pos) -> std::optional<Error> {
        if (deadline && std::chrono::steady_clock::now() > *deadline) {
            return Error("copy " + std::to_string(origin.size) + " bytes", ETIMEDOUT,
                         "stopped at byte " + std::to_string(pos) + ", past the time allowed");
        }
        return std::nullopt;
    };
    // Pieces small enough that a deadline is checked often, large enough to cost nothing.
    const std::uint64_t piece = deadline ? (64u << 20) : (1u << 30);
    if (!origin.block_device && fastest == CopyMethod::Reflink) {
        hint_small_cow_extents(out_fd);
        // FICLONE shares the origin's extents (XFS, btrfs): no data moves, holes stay holes.
        if (::ioctl(out_fd, FICLONE, in) == 0) {
            return CopyMethod::Reflink;
        }
        if (!unsupported(errno)) {
            return errno_error("clone the origin (FICLONE)");
        }
        spdlog::debug("flatten: FICLONE unavailable ({}), copying", describe_errno(errno));
    }
    if (::ftruncate(out_fd, static_cast<off_t>(origin.size)) != 0) {
        return errno_error("size the output to " + std::to_string(origin.size) + " bytes");
    }
    // A block device has no SEEK_DATA; its zero blocks are skipped by the read/write copy.
    std::vector<Segment> segments{{0, origin.size}};
    CopyMethod method = origin.block_device ? CopyMethod::ReadWrite : fastest;
    if (method == CopyMethod::Reflink) {
        method = CopyMethod::CopyFileRange;
    }
    if (!origin.block_device) {
        auto found = data_segments(in, origin.size);
        if (!found) {
            return std::move(found).error();
        }
        segments = std::move(*found);
    }
    Buffer buf;
    for (const Segment& s : segments) {
        std::uint64_t pos = s.offset;
        const std::uint64_t end = s.offset + s.length;
        while (method == CopyMethod::CopyFileRange && pos < end) {
            if (auto late = past_deadline(pos)) {
                return *late;
            }
            auto off_in = static_cast<loff_t>(pos);
            auto off_out = static_cast<loff_t>(pos);
            const auto len = static_cast<std::size_t>(std::min<std::uint64_t>(end - pos, piece));
            ssize_t n = ::copy_file_range(in, &off_in, out_fd, &off_out, len, 0);
            if (n > 0) {
                pos += static_cast<std::uint64_t>(n);
                continue;
            }
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n == 0) {
                return Error(
                    "copy the origin at byte " + std::to_string(pos), EIO,
                    "it ended before its size of " + std::to_string(origin.size) + " bytes");
            }
            if (!unsupported(errno)) {
                return at("copy (copy_file_range) the origin into", "the output", pos);
            }
            spdlog::debug("flatten: copy_file_range unavailable ({}), using read/write",
                          describe_errno(errno));
            method = CopyMethod::ReadWrite;
        }
        if (pos < end) {
            if (auto late = past_deadline(pos)) {
                return *late;
            }
            if (!buf) {
                auto b = allocate(kCopyBlock);
                if (!b) {
                    return std::move(b).error();
                }
                buf = std::move(*b);
            }
            if (auto r = copy_skipping_zeros(in, out_fd, pos, end - pos, buf.get()); !r) {
                return std::move(r).error();
            }
        }
    }
    if (::ftruncate(out_fd, static_cast<off_t>(origin.size)) != 0) {
        return errno_error("size the output to " + std::to_string(origin.size) + " bytes");
    }
    return method;
}

Result<std::size_t> apply_exceptions(int cow_fd, int out_fd,
                                     const std::vector<Exception>& exceptions,
                                     std::uint64_t chunk_bytes, std::uint64_t origin_size) {
    if (exceptions.empty()) {
        return std::size_t{0};
    }
    // dm hands out CoW chunks in write order, densely: read the CoW sequentially, in windows
    // of up to 8 MiB, in new_chunk order. Cold, that is a few large reads instead of one
    // random 4 KiB read per exception; the scattered writes land in the page cache.
    std::vector<Exception> by_cow = exceptions;
    std::sort(by_cow.begin(), by_cow.end(),
              [](const Exception& a, const Exception& b) { return a.new_chunk < b.new_chunk; });
    const std::uint64_t window = std::max<std::uint64_t>(1, (8u << 20) / chunk_bytes);
    auto buf = allocate(static_cast<std::size_t>(window * chunk_bytes));
    if (!buf) {
        return std::move(buf).error();
    }
    // The snapshot saw the origin through a block device, in whole 512-byte sectors: the bytes
    // of a partial last sector were never part of it, so no chunk may overwrite them.
    const std::uint64_t seen = origin_size / 512 * 512;
    std::size_t applied = 0;
    for (std::size_t i = 0; i < by_cow.size();) {
        const std::uint64_t first = by_cow[i].new_chunk;
        std::size_t end = i;
        while (end < by_cow.size() && by_cow[end].new_chunk < first + window) {
            ++end;
        }
        const auto span =
            static_cast<std::size_t>((by_cow[end - 1].new_chunk - first + 1) * chunk_bytes);
        auto got = pread_full(cow_fd, buf->get(), span, first * chunk_bytes, "the CoW");
        if (!got) {
            return std::move(got).error();
        }
        if (*got < span) {
            return Error("read the CoW at byte " + std::to_string(first * chunk_bytes + *got), EIO,
                         "it ends before chunk " + std::to_string(by_cow[end - 1].new_chunk));
        }
        for (std::size_t k = i; k < end;) {
            // A sequential guest write is a run contiguous on both sides: one write for it.
            std::uint64_t run = 1;
            while (k + run < end && by_cow[k + run].old_chunk == by_cow[k].old_chunk + run &&
                   by_cow[k + run].new_chunk == by_cow[k].new_chunk + run) {
                ++run;
            }
            const std::uint64_t dst = by_cow[k].old_chunk * chunk_bytes;
            if (dst >= seen) {
                return Error("apply origin chunk " + std::to_string(by_cow[k].old_chunk), EINVAL,
                             "past the " + std::to_string(seen) + " bytes the snapshot saw");
            }
            // The origin's last chunk may be partial: only its bytes the snapshot saw count.
            const auto len = static_cast<std::size_t>(std::min(run * chunk_bytes, seen - dst));
            const std::byte* src = buf->get() + (by_cow[k].new_chunk - first) * chunk_bytes;
            if (auto w = pwrite_full(out_fd, src, len, dst); !w) {
                return std::move(w).error();
            }
            applied += static_cast<std::size_t>(run);
            k += static_cast<std::size_t>(run);
        }
        i = end;
    }
    return applied;
}

}  // namespace wrenn::flatten
