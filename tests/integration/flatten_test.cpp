// flatten against the real thing: a persistent dm-snapshot written through the kernel, removed,
// then flattened from its origin and CoW files; the image must equal what the snapshot showed.
// Until the loop/ and dm/ libraries land this file drives loop ioctls and libdevmapper itself.
#include "flatten/flatten.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <libdevmapper.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <linux/magic.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "agent/transfer/transfer.hpp"
#include "common/digest.hpp"

using namespace wrenn::flatten;

namespace {

constexpr std::uint64_t kChunk = 4096;

std::string prefix() {
    const char* p = std::getenv("WRENN_TEST_PREFIX");
    return p != nullptr && *p != '\0' ? p : "wrenn-test";
}

// A loop device over a file, detached (autoclear) when the last user lets go.
struct Loop {
    int fd = -1;
    std::string path;
    Loop(const std::string& file, bool read_only) {
        int backing = ::open(file.c_str(), (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
        REQUIRE(backing >= 0);
        int ctl = ::open("/dev/loop-control", O_RDWR | O_CLOEXEC);
        REQUIRE(ctl >= 0);
        for (int attempt = 0; attempt < 64 && fd < 0; ++attempt) {
            int n = ::ioctl(ctl, LOOP_CTL_GET_FREE);
            REQUIRE(n >= 0);
            path = "/dev/loop" + std::to_string(n);
            int dev = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
            REQUIRE(dev >= 0);
            loop_config cfg{};
            cfg.fd = static_cast<__u32>(backing);
            cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR | (read_only ? LO_FLAGS_READ_ONLY : 0);
            if (::ioctl(dev, LOOP_CONFIGURE, &cfg) == 0) {
                fd = dev;
            } else {
                INFO("LOOP_CONFIGURE " << path << ": " << std::strerror(errno));
                REQUIRE(errno == EBUSY);  // another process took it first: try the next one
                ::close(dev);
            }
        }
        ::close(ctl);
        ::close(backing);
        REQUIRE(fd >= 0);
    }
    ~Loop() {
        ::ioctl(fd, LOOP_CLR_FD);
        ::close(fd);
    }
    Loop(const Loop&) = delete;
    Loop& operator=(const Loop&) = delete;
};

// A persistent dm-snapshot; removed on destruction unless removed earlier.
struct Snapshot {
    std::string name;
    std::string dev;
    Snapshot(std::string n, const Loop& origin, const Loop& cow, std::uint64_t sectors)
        : name(std::move(n)) {
        dm_udev_set_sync_support(0);
        dm_task* t = dm_task_create(DM_DEVICE_CREATE);
        REQUIRE(t != nullptr);
        const std::string params = origin.path + " " + cow.path + " P 8";
        REQUIRE(dm_task_set_name(t, name.c_str()) == 1);
        REQUIRE(dm_task_add_target(t, 0, sectors, "snapshot", params.c_str()) == 1);
        const int ran = dm_task_run(t);
        dm_info info{};
        const int got = ran ? dm_task_get_info(t, &info) : 0;
        dm_task_destroy(t);
        INFO("create " << name << " (" << params << ")");
        REQUIRE(ran == 1);
        REQUIRE(got == 1);
        // Without udev there is no /dev/mapper node; devtmpfs always makes dm-<minor>.
        dev = "/dev/dm-" + std::to_string(info.minor);
    }
    void remove() {
        if (name.empty()) {
            return;
        }
        dm_task* t = dm_task_create(DM_DEVICE_REMOVE);
        REQUIRE(t != nullptr);
        dm_task_set_name(t, name.c_str());
        dm_task_retry_remove(t);
        const int ran = dm_task_run(t);
        dm_task_destroy(t);
        REQUIRE(ran == 1);
        name.clear();
    }
    ~Snapshot() {
        if (!name.empty()) {
            dm_task* t = dm_task_create(DM_DEVICE_REMOVE);
            dm_task_set_name(t, name.c_str());
            dm_task_retry_remove(t);
            dm_task_run(t);
            dm_task_destroy(t);
        }
    }
    Snapshot(const Snapshot&) = delete;
    Snapshot& operator=(const Snapshot&) = delete;
};

std::uint64_t cow_bytes_for(std::uint64_t origin_bytes) {
    // KERNEL-NOTES: header + one metadata chunk per 256 + every origin chunk + a spare area.
    const std::uint64_t chunks = (origin_bytes + kChunk - 1) / kChunk;
    return (1 + (chunks + 255) / 256 + chunks + 257) * kChunk;
}

void make_sparse(const std::string& path, std::uint64_t size) {
    int fd = ::open(path.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
    REQUIRE(fd >= 0);
    REQUIRE(::ftruncate(fd, static_cast<off_t>(size)) == 0);
    ::close(fd);
}

void fill_random(std::vector<std::byte>& buf, std::mt19937_64& rng) {
    for (std::size_t i = 0; i + 8 <= buf.size(); i += 8) {
        const std::uint64_t v = rng();
        std::memcpy(buf.data() + i, &v, 8);
    }
    for (std::size_t i = buf.size() & ~std::size_t{7}; i < buf.size(); ++i) {
        buf[i] = static_cast<std::byte>(rng());
    }
}

void pwrite_all(int fd, const std::vector<std::byte>& buf, std::uint64_t off) {
    REQUIRE(::pwrite(fd, buf.data(), buf.size(), static_cast<off_t>(off)) ==
            static_cast<ssize_t>(buf.size()));
}

std::vector<std::byte> read_all(const std::string& path, std::uint64_t size) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    std::vector<std::byte> out(size);
    std::uint64_t done = 0;
    while (done < size) {
        ssize_t n = ::pread(fd, out.data() + done, size - done, static_cast<off_t>(done));
        REQUIRE(n > 0);
        done += static_cast<std::uint64_t>(n);
    }
    ::close(fd);
    return out;
}

bool exists(const std::string& path) {
    struct stat st {};
    return ::lstat(path.c_str(), &st) == 0;
}

std::size_t temp_files_in(const std::string& dir, const std::string& out) {
    std::size_t n = 0;
    if (DIR* d = ::opendir(dir.c_str())) {
        const std::string stem = out.substr(out.rfind('/') + 1) + ".tmp-";
        while (dirent* e = ::readdir(d)) {
            n += std::string(e->d_name).rfind(stem, 0) == 0 ? 1 : 0;
        }
        ::closedir(d);
    }
    return n;
}

struct Workdir {
    std::string path;
    explicit Workdir(const std::string& fs) : path(fs + "/" + prefix() + "-flatten") {
        REQUIRE(::mkdir(path.c_str(), 0755) == 0);
    }
    ~Workdir() {
        if (DIR* d = ::opendir(path.c_str())) {
            while (dirent* e = ::readdir(d)) {
                ::unlink((path + "/" + e->d_name).c_str());
            }
            ::closedir(d);
        }
        ::rmdir(path.c_str());
    }
    std::string operator/(const std::string& n) const { return path + "/" + n; }
};

// The sandbox archive's round trip against the kernel: export the removed snapshot's CoW,
// import the archive into a new CoW (flatten's ExceptionStoreWriter), and load a snapshot over
// it: the device shows the same bytes, and new writes through it land without clobbering the
// imported chunks (the kernel carries on allocating after them).
void exported_and_imported_matches(const Workdir& dir, const std::string& origin,
                                   const std::string& cow, std::uint64_t size,
                                   const std::vector<std::byte>& seen, std::mt19937_64& rng) {
    const auto origin_bytes = read_all(origin, size);
    wrenn::Sha256 digest;
    digest.update(origin_bytes.data(), origin_bytes.size());
    const std::string sha256 = "sha256:" + digest.hex_digest();  // a version 1 archive
    std::vector<std::byte> archive;
    auto exported = wrenn::agent::export_archive(
        {cow, size, sha256, "origin.img"}, true, [&](std::span<const std::byte> b) {
            archive.insert(archive.end(), b.begin(), b.end());
            return wrenn::success();
        });
    INFO((exported.ok() ? std::string("ok") : exported.error().message()));
    REQUIRE(exported.ok());
    const std::string imported = dir / "imported.cow";
    wrenn::agent::ArchiveImport import([&](const wrenn::archive::Header& h) {
        REQUIRE(h.template_digest_name() == sha256);
        return wrenn::Result<wrenn::agent::ImportTarget>(
            wrenn::agent::ImportTarget{size, imported, cow_bytes_for(size)});
    });
    for (std::size_t at = 0; at < archive.size(); at += 65536) {
        REQUIRE(import
                    .feed(std::span(archive).subspan(
                        at, std::min<std::size_t>(65536, archive.size() - at)))
                    .ok());
    }
    auto stats = import.finish();
    INFO((stats.ok() ? std::string("ok") : stats.error().message()));
    REQUIRE(stats.ok());
    std::cout << "archive: " << exported->chunks << " chunks, " << archive.size()
              << " bytes compressed" << std::endl;
    CHECK(stats->chunks == exported->chunks);

    std::vector<std::byte> after = seen;
    {
        Loop origin_loop(origin, true);
        Loop cow_loop(imported, false);
        Snapshot snap(prefix() + "-imported", origin_loop, cow_loop, size / 512);
        CHECK(read_all(snap.dev, size) == seen);
        int fd = ::open(snap.dev.c_str(), O_RDWR | O_CLOEXEC);
        REQUIRE(fd >= 0);
        std::vector<std::byte> block(kChunk);
        for (int i = 0; i < 600; ++i) {  // more than two metadata areas of new exceptions
            fill_random(block, rng);
            const std::uint64_t at = (rng() % (size / kChunk)) * kChunk;
            pwrite_all(fd, block, at);
            std::copy(block.begin(), block.end(), after.begin() + static_cast<std::ptrdiff_t>(at));
        }
        REQUIRE(::fsync(fd) == 0);
        ::close(fd);
        snap.remove();
    }
    Loop origin_loop(origin, true);
    Loop cow_loop(imported, false);
    Snapshot again(prefix() + "-imported", origin_loop, cow_loop, size / 512);
    CHECK(read_all(again.dev, size) == after);
    again.remove();
}

void flatten_matches_snapshot(const std::string& fs, long fs_magic, CopyMethod expected) {
    struct statfs sfs {};
    REQUIRE(::statfs(fs.c_str(), &sfs) == 0);
    REQUIRE(static_cast<long>(sfs.f_type) == fs_magic);
    Workdir dir(fs);
    std::mt19937_64 rng(0xf1a77e);

    // The origin: 48 MiB and half a chunk, random extents of data between holes.
    const std::uint64_t size = (48u << 20) + 2048;
    const std::string origin = dir / "origin.img";
    make_sparse(origin, size);
    {
        int fd = ::open(origin.c_str(), O_WRONLY | O_CLOEXEC);
        REQUIRE(fd >= 0);
        std::vector<std::byte> extent(256 << 10);
        for (int i = 0; i < 96; ++i) {
            fill_random(extent, rng);
            pwrite_all(fd, extent, (rng() % (size / extent.size())) * extent.size());
        }
        std::vector<std::byte> tail(3000);
        fill_random(tail, rng);
        pwrite_all(fd, tail, size - tail.size());
        ::close(fd);
    }
    const std::string cow = dir / "cow";
    make_sparse(cow, cow_bytes_for(size));

    std::vector<std::byte> seen;
    {
        Loop origin_loop(origin, true);
        Loop cow_loop(cow, false);
        Snapshot snap(prefix() + "-flatten", origin_loop, cow_loop, size / 512);
        int fd = ::open(snap.dev.c_str(), O_RDWR | O_CLOEXEC);
        REQUIRE(fd >= 0);
        std::vector<std::byte> block(kChunk);
        for (int i = 0; i < 1500; ++i) {  // 4 KiB-aligned chunk rewrites
            fill_random(block, rng);
            pwrite_all(fd, block, (rng() % (size / kChunk)) * kChunk);
        }
        for (int i = 0; i < 300; ++i) {  // unaligned writes, some across chunk boundaries
            std::vector<std::byte> bytes(1 + rng() % 20000);
            fill_random(bytes, rng);
            pwrite_all(fd, bytes, rng() % (size - bytes.size()));
        }
        std::vector<std::byte> run(2 << 20);  // a sequential run: contiguous CoW chunks
        fill_random(run, rng);
        pwrite_all(fd, run, 8u << 20);
        std::vector<std::byte> tail(1000);  // inside the partial last chunk
        fill_random(tail, rng);
        pwrite_all(fd, tail, size - 1500);
        REQUIRE(::fsync(fd) == 0);
        // Read back what the snapshot shows, not what the page cache remembers.
        REQUIRE(::ioctl(fd, BLKFLSBUF, 0) == 0);
        ::close(fd);
        seen = read_all(snap.dev, size);
        snap.remove();  // the CoW is stable from here on
    }

    const std::string out = dir / "out.img";
    auto stats = flatten(origin, cow, out);
    INFO((stats.ok() ? std::string("ok") : stats.error().message()));
    REQUIRE(stats.ok());
    std::cout << "flatten on " << fs << ": " << to_string(stats->method) << ", "
              << stats->chunks_applied << " chunks applied" << std::endl;
    CHECK(stats->method == expected);
    CHECK(stats->size_bytes == size);
    CHECK(stats->chunks_applied > 1500);
    CHECK(read_all(out, size) == seen);
    struct stat st {};
    REQUIRE(::stat(out.c_str(), &st) == 0);
    CHECK(st.st_size == static_cast<off_t>(size));
    CHECK(static_cast<std::uint64_t>(st.st_blocks) * 512 < size);  // holes survived

    // A block-device origin (as a TCMU origin is): read in large blocks, zeros skipped.
    {
        Loop origin_dev(origin, true);
        const std::string out_dev = dir / "out-from-device.img";
        auto from_dev = flatten(origin_dev.path, cow, out_dev);
        INFO((from_dev.ok() ? std::string("ok") : from_dev.error().message()));
        REQUIRE(from_dev.ok());
        std::cout << "flatten on " << fs << " from a block device: " << to_string(from_dev->method)
                  << std::endl;
        CHECK(from_dev->method == CopyMethod::ReadWrite);
        CHECK(read_all(out_dev, size) == seen);
        REQUIRE(::stat(out_dev.c_str(), &st) == 0);
        CHECK(static_cast<std::uint64_t>(st.st_blocks) * 512 < size);
    }

    exported_and_imported_matches(dir, origin, cow, size, seen, rng);

    // A corrupted header, then a header the kernel would call invalid: refused, nothing written.
    int cfd = ::open(cow.c_str(), O_RDWR | O_CLOEXEC);
    REQUIRE(cfd >= 0);
    const std::uint32_t bad_magic = 0xdeadbeef;
    REQUIRE(::pwrite(cfd, &bad_magic, 4, 0) == 4);
    const std::string refused = dir / "refused.img";
    auto corrupt = flatten(origin, cow, refused);
    REQUIRE_FALSE(corrupt.ok());
    std::cout << "corrupt header: " << corrupt.error().message() << std::endl;
    CHECK(corrupt.error().message().find("bad magic 0xdeadbeef") != std::string::npos);
    CHECK_FALSE(store_marked_invalid(corrupt.error()));
    CHECK_FALSE(exists(refused));
    CHECK(temp_files_in(dir.path, refused) == 0);

    const std::uint32_t magic = 0x70416e53;
    const std::uint32_t invalid = 0;
    REQUIRE(::pwrite(cfd, &magic, 4, 0) == 4);
    REQUIRE(::pwrite(cfd, &invalid, 4, 4) == 4);
    ::close(cfd);
    auto marked = flatten(origin, cow, refused);
    REQUIRE_FALSE(marked.ok());
    std::cout << "valid=0: " << marked.error().message() << std::endl;
    CHECK(store_marked_invalid(marked.error()));
    CHECK(marked.error().message().find("kernel invalidated") != std::string::npos);
    CHECK_FALSE(exists(refused));
    CHECK(temp_files_in(dir.path, refused) == 0);
}

}  // namespace

TEST_CASE("flatten reproduces a persistent dm-snapshot byte for byte on XFS", "[flatten]") {
    REQUIRE(::geteuid() == 0);
    flatten_matches_snapshot("/scratch", XFS_SUPER_MAGIC, CopyMethod::Reflink);
}

TEST_CASE("flatten reproduces a persistent dm-snapshot byte for byte on ext4", "[flatten]") {
    REQUIRE(::geteuid() == 0);
    flatten_matches_snapshot("/scratch-ext4", EXT4_SUPER_MAGIC, CopyMethod::CopyFileRange);
}

TEST_CASE("flatten refuses a CoW that the kernel itself invalidated", "[flatten]") {
    REQUIRE(::geteuid() == 0);
    Workdir dir("/scratch");
    const std::uint64_t size = 4u << 20;
    const std::string origin = dir / "origin.img";
    const std::string cow = dir / "cow";
    make_sparse(origin, size);
    make_sparse(cow, 16 * kChunk);  // room for 14 chunks: far too small for what follows
    {
        Loop origin_loop(origin, true);
        Loop cow_loop(cow, false);
        Snapshot snap(prefix() + "-flatten-full", origin_loop, cow_loop, size / 512);
        int fd = ::open(snap.dev.c_str(), O_RDWR | O_CLOEXEC | O_DIRECT);
        REQUIRE(fd >= 0);
        void* mem = nullptr;
        REQUIRE(::posix_memalign(&mem, kChunk, kChunk) == 0);
        std::memset(mem, 0x5a, kChunk);
        int failed = 0;
        for (std::uint64_t c = 0; c < 64; ++c) {
            failed += ::pwrite(fd, mem, kChunk, static_cast<off_t>(c * kChunk)) < 0 ? 1 : 0;
        }
        std::free(mem);
        ::close(fd);
        CHECK(failed > 0);  // the overflow invalidated the snapshot: writes now fail
        snap.remove();
    }
    auto r = flatten(origin, cow, dir / "out.img");
    REQUIRE_FALSE(r.ok());
    std::cout << "kernel-invalidated CoW: " << r.error().message() << std::endl;
    CHECK(store_marked_invalid(r.error()));
    CHECK_FALSE(exists(dir / "out.img"));
}
