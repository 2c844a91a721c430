// DeviceMapper against the real device-mapper (root, in the VM, which has no udev): snapshots
// over loop devices, listing, status, busy removal, a full rewrite of the origin and the
// /dev/mapper nodes. Images live in /scratch; names carry WRENN_TEST_PREFIX.
#include <fcntl.h>
#include <libdevmapper.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "dm/device_mapper.hpp"
#include "dm/snapshot_format.hpp"
#include "loop/loop_device.hpp"

namespace {

using namespace std::chrono_literals;
using wrenn::dm::DeviceMapper;
using wrenn::dm::SnapshotStatus;
using wrenn::loop::AttachOptions;
using wrenn::loop::LoopDevice;

constexpr std::uint64_t kBlock = 4096;
constexpr std::uint64_t kOriginBytes = 16 << 20;

std::string prefix() {
    const char* p = std::getenv("WRENN_TEST_PREFIX");
    return p != nullptr && *p != '\0' ? p : "wrenn-test";
}

// A device name that list_snapshots() counts as ours: "wrenn-<prefix>-<what>".
std::string dm_name(const std::string& what) {
    return wrenn::dm::device_name(prefix() + "-" + what);
}

bool exists(const std::string& path) {
    struct stat st {};
    return ::lstat(path.c_str(), &st) == 0;
}

std::string major_minor(dev_t dev) {
    return std::to_string(major(dev)) + ":" + std::to_string(minor(dev));
}

// 4 KiB, aligned for O_DIRECT, filled with one byte value.
struct Block {
    explicit Block(unsigned char fill) {
        void* p = nullptr;
        REQUIRE(::posix_memalign(&p, kBlock, kBlock) == 0);
        data.reset(static_cast<unsigned char*>(p));
        std::memset(data.get(), fill, kBlock);
    }
    struct Free {
        void operator()(unsigned char* p) const { std::free(p); }
    };
    std::unique_ptr<unsigned char, Free> data;
    bool all(unsigned char v) const {
        return std::all_of(data.get(), data.get() + kBlock,
                           [v](unsigned char c) { return c == v; });
    }
};

// A file in /scratch of `bytes` (sparse, or filled with `fill` when non-zero); removed at exit.
class ScratchFile {
  public:
    ScratchFile(const std::string& what, std::uint64_t bytes, unsigned char fill = 0)
        : path_("/scratch/" + prefix() + "-dm-" + what + ".img") {
        const int fd = ::open(path_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        REQUIRE(fd >= 0);
        REQUIRE(::ftruncate(fd, static_cast<off_t>(bytes)) == 0);
        if (fill != 0) {
            Block b(fill);
            for (std::uint64_t off = 0; off < bytes; off += kBlock) {
                REQUIRE(::pwrite(fd, b.data.get(), kBlock, static_cast<off_t>(off)) ==
                        static_cast<ssize_t>(kBlock));
            }
        }
        ::close(fd);
    }
    ~ScratchFile() { ::unlink(path_.c_str()); }
    ScratchFile(const ScratchFile&) = delete;
    ScratchFile& operator=(const ScratchFile&) = delete;
    const std::string& path() const { return path_; }

  private:
    std::string path_;
};

// Removes a dm device at scope exit if a test left it (a failed REQUIRE).
struct RemoveAtExit {
    DeviceMapper& dm;
    std::string name;
    ~RemoveAtExit() {
        if (auto i = dm.info(name); i && i->has_value()) {
            (void)dm.remove(name, 5s);
        }
    }
};

DeviceMapper open_dm() {
    auto dm = DeviceMapper::open();
    INFO((dm ? "" : dm.error().message()));
    REQUIRE(dm.ok());
    return std::move(dm).value();
}

LoopDevice attach(const std::string& file, bool read_only) {
    AttachOptions opts;
    opts.read_only = read_only;
    auto loop = LoopDevice::attach(file, opts);
    INFO((loop ? "" : loop.error().message()));
    REQUIRE(loop.ok());
    return std::move(loop).value();
}

// An origin (filled with 0xA1) on a read-only loop and a CoW of `cow_bytes` on a rw loop.
struct Backing {
    explicit Backing(const std::string& what, std::uint64_t cow_bytes,
                     std::uint64_t origin_bytes = kOriginBytes)
        : origin_file(what + "-origin", origin_bytes, 0xA1),
          cow_file(what + "-cow", cow_bytes),
          origin(attach(origin_file.path(), true)),
          cow(attach(cow_file.path(), false)) {}
    std::uint64_t origin_sectors() const { return origin.size_bytes() / 512; }
    std::string origin_dev() const { return major_minor(origin.device_number()); }
    std::string cow_dev() const { return major_minor(cow.device_number()); }
    ScratchFile origin_file;
    ScratchFile cow_file;
    LoopDevice origin;
    LoopDevice cow;
};

std::string create(DeviceMapper& dm, const std::string& name, const Backing& b) {
    auto path = dm.create_snapshot(name, std::string(wrenn::dm::kUuidPrefix) + name,
                                   b.origin_sectors(), b.origin_dev(), b.cow_dev());
    INFO((path ? "" : path.error().message()));
    REQUIRE(path.ok());
    return *path;
}

void require_removed(DeviceMapper& dm, const std::string& name) {
    auto r = dm.remove(name, 5s);
    INFO((r ? "" : r.error().message()));
    REQUIRE(r.ok());
    auto i = dm.info(name);
    REQUIRE(i.ok());
    REQUIRE_FALSE(i->has_value());
}

bool loop_bound(int number) {
    return exists("/sys/block/loop" + std::to_string(number) + "/loop");
}

}  // namespace

TEST_CASE("dm: a snapshot over two loops reads the origin and keeps writes in the CoW", "[dm]") {
    auto dm = open_dm();
    const std::string name = dm_name("proof");
    int origin_loop = -1;
    int cow_loop = -1;
    {
        Backing b("proof", wrenn::dm::cow_size_for_origin(kOriginBytes));
        origin_loop = b.origin.number();
        cow_loop = b.cow.number();
        RemoveAtExit guard{dm, name};
        const std::string path = create(dm, name, b);
        REQUIRE(path == "/dev/mapper/" + name);

        const int fd = ::open(path.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC);
        REQUIRE(fd >= 0);
        Block read_back(0);
        REQUIRE(::pread(fd, read_back.data.get(), kBlock, 0) == static_cast<ssize_t>(kBlock));
        CHECK(read_back.all(0xA1));  // the origin shows through
        Block written(0x5B);
        REQUIRE(::pwrite(fd, written.data.get(), kBlock, 5 * kBlock) ==
                static_cast<ssize_t>(kBlock));
        REQUIRE(::fsync(fd) == 0);
        REQUIRE(::pread(fd, read_back.data.get(), kBlock, 5 * kBlock) ==
                static_cast<ssize_t>(kBlock));
        CHECK(read_back.all(0x5B));
        ::close(fd);

        // The origin file itself is untouched.
        const int ofd = ::open(b.origin_file.path().c_str(), O_RDONLY | O_CLOEXEC);
        REQUIRE(ofd >= 0);
        REQUIRE(::pread(ofd, read_back.data.get(), kBlock, 5 * kBlock) ==
                static_cast<ssize_t>(kBlock));
        CHECK(read_back.all(0xA1));
        ::close(ofd);

        auto status = dm.snapshot_status(name);
        REQUIRE(status.ok());
        CHECK(status->state == SnapshotStatus::State::Active);
        CHECK(status->allocated_sectors >= 8);

        require_removed(dm, name);
        CHECK_FALSE(exists(path));
        // Our descriptors go at scope exit; the autoclear loops then go with them.
    }
    for (int i = 0; i < 100 && (loop_bound(origin_loop) || loop_bound(cow_loop)); ++i) {
        std::this_thread::sleep_for(20ms);
    }
    CHECK_FALSE(loop_bound(origin_loop));
    CHECK_FALSE(loop_bound(cow_loop));
}

TEST_CASE("dm: list_snapshots lists our snapshots only; status, devices, info, remove", "[dm]") {
    auto dm = open_dm();
    const std::string ours = dm_name("listed");
    const std::string other_snapshot = prefix() + "-unprefixed";  // a snapshot, not our name
    const std::string linear = dm_name("linear");                 // our name, not a snapshot
    const std::uint64_t cow_bytes = wrenn::dm::cow_size_for_origin(kOriginBytes);
    Backing b("listed", cow_bytes);
    Backing b2("unprefixed", cow_bytes);
    RemoveAtExit g1{dm, ours};
    RemoveAtExit g2{dm, other_snapshot};
    RemoveAtExit g3{dm, linear};

    create(dm, ours, b);
    create(dm, other_snapshot, b2);
    {
        // A linear device made directly through libdm (DeviceMapper makes snapshots only).
        dm_task* t = dm_task_create(DM_DEVICE_CREATE);
        REQUIRE(t != nullptr);
        const std::string params = b.cow_dev() + " 0";
        REQUIRE(dm_task_set_name(t, linear.c_str()));
        REQUIRE(dm_task_add_target(t, 0, 8, "linear", params.c_str()));
        const int ok = dm_task_run(t);
        dm_task_destroy(t);
        REQUIRE(ok);
    }

    auto listed = dm.list_snapshots();
    REQUIRE(listed.ok());
    auto has = [&](const std::string& n) {
        return std::any_of(listed->begin(), listed->end(),
                           [&](const wrenn::dm::ListedSnapshot& l) { return l.name == n; });
    };
    CHECK(has(ours));
    CHECK_FALSE(has(other_snapshot));
    CHECK_FALSE(has(linear));

    auto status = dm.snapshot_status(ours);
    REQUIRE(status.ok());
    CHECK(status->state == SnapshotStatus::State::Active);
    CHECK(status->total_sectors == cow_bytes / 512);

    auto devices = dm.snapshot_devices(ours);
    REQUIRE(devices.ok());
    CHECK(devices->first == b.origin_dev());
    CHECK(devices->second == b.cow_dev());

    auto info = dm.info(ours);
    REQUIRE(info.ok());
    REQUIRE(info->has_value());
    CHECK((*info)->exists);
    CHECK((*info)->open_count == 0);
    CHECK_FALSE((*info)->suspended);

    // The listing's own query carries the same facts (recovery asks nothing more per device).
    auto listed_as = [&](const std::string& n) {
        auto list = dm.list_snapshots();
        REQUIRE(list.ok());
        auto it = std::find_if(list->begin(), list->end(),
                               [&](const wrenn::dm::ListedSnapshot& l) { return l.name == n; });
        REQUIRE(it != list->end());
        return *it;
    };
    CHECK(listed_as(ours).origin_dev == b.origin_dev());
    CHECK(listed_as(ours).cow_dev == b.cow_dev());
    CHECK_FALSE(listed_as(ours).suspended);
    REQUIRE(dm.suspend(ours).ok());
    CHECK(listed_as(ours).suspended);
    REQUIRE(dm.resume(ours).ok());
    CHECK_FALSE(listed_as(ours).suspended);

    // Not a snapshot: status and devices say so instead of misparsing.
    auto linear_status = dm.snapshot_status(linear);
    REQUIRE_FALSE(linear_status.ok());
    CHECK(linear_status.error().code() == EINVAL);

    // The same name again: EEXIST, and the existing device is left alone.
    auto again = dm.create_snapshot(ours, "", b.origin_sectors(), b.origin_dev(), b.cow_dev());
    REQUIRE_FALSE(again.ok());
    CHECK(again.error().code() == EEXIST);
    CHECK(dm.info(ours)->has_value());
    CHECK(exists(DeviceMapper::device_path(ours)));

    require_removed(dm, ours);
    require_removed(dm, other_snapshot);
    require_removed(dm, linear);
    listed = dm.list_snapshots();
    REQUIRE(listed.ok());
    CHECK_FALSE(has(ours));

    // Missing devices: ENXIO from remove, status and devices; info is nullopt.
    auto gone = dm.remove(ours, 1s);
    REQUIRE_FALSE(gone.ok());
    CHECK(gone.error().code() == ENXIO);
    CHECK(dm.snapshot_status(ours).error().code() == ENXIO);
    CHECK(dm.snapshot_devices(ours).error().code() == ENXIO);
    REQUIRE(dm.info(ours).ok());
    CHECK_FALSE(dm.info(ours)->has_value());
}

TEST_CASE("dm: a create cut short by a kill is listed as ours, and removable", "[dm]") {
    auto dm = open_dm();
    const std::string bare = dm_name("cut-bare");        // created, no table
    const std::string loaded = dm_name("cut-loaded");    // table loaded, never resumed
    const std::string foreign = dm_name("cut-foreign");  // our name, no table, not our UUID
    Backing b("cut", wrenn::dm::cow_size_for_origin(kOriginBytes));
    RemoveAtExit g1{dm, bare};
    RemoveAtExit g2{dm, loaded};
    RemoveAtExit g3{dm, foreign};
    auto id_of = [](const std::string& name) { return name.substr(wrenn::dm::kNamePrefix.size()); };
    auto run = [](int type, const std::string& name, const std::string& uuid,
                  const std::string& params) {
        dm_task* t = dm_task_create(type);
        REQUIRE(t != nullptr);
        REQUIRE(dm_task_set_name(t, name.c_str()));
        if (!uuid.empty()) {
            REQUIRE(dm_task_set_uuid(t, uuid.c_str()));
        }
        if (!params.empty()) {
            REQUIRE(dm_task_add_target(t, 0, kOriginBytes / 512, "snapshot", params.c_str()));
        }
        const int ok = dm_task_run(t);
        dm_task_destroy(t);
        REQUIRE(ok);
    };
    // What the agent leaves when killed after DM_DEV_CREATE, or after the table load.
    // One with a tagged UUID, one with the form from before tags: both are wrenn's.
    run(DM_DEVICE_CREATE, bare, wrenn::dm::device_uuid("0123456789abcdef", id_of(bare)), "");
    run(DM_DEVICE_CREATE, loaded, wrenn::dm::legacy_device_uuid(id_of(loaded)), "");
    run(DM_DEVICE_RELOAD, loaded, "",
        wrenn::dm::snapshot_table_params(b.origin_dev(), b.cow_dev()));
    run(DM_DEVICE_CREATE, foreign, "SOMEONE-ELSE-" + id_of(foreign), "");

    auto listed = dm.list_snapshots();
    REQUIRE(listed.ok());
    auto has = [&](const std::string& n) {
        return std::any_of(listed->begin(), listed->end(),
                           [&](const wrenn::dm::ListedSnapshot& l) { return l.name == n; });
    };
    CHECK(has(bare));
    CHECK(has(loaded));
    CHECK_FALSE(has(foreign));

    // The status read says what it is, not a misparse.
    CHECK(dm.snapshot_status(bare).error().code() == EINVAL);
    require_removed(dm, bare);
    require_removed(dm, loaded);  // releases the CoW loop its inactive table held
    require_removed(dm, foreign);
}

TEST_CASE("dm: a failed create leaves nothing behind and reports the kernel's errno", "[dm]") {
    auto dm = open_dm();
    const std::string name = dm_name("failed");
    Backing b("failed", wrenn::dm::cow_size_for_origin(kOriginBytes));
    RemoveAtExit guard{dm, name};

    // Larger than the origin: the table load fails (EINVAL) after the device was created.
    auto too_big =
        dm.create_snapshot(name, "", b.origin_sectors() * 2, b.origin_dev(), b.cow_dev());
    REQUIRE_FALSE(too_big.ok());
    CHECK(too_big.error().code() == EINVAL);
    CHECK_FALSE(dm.info(name)->has_value());
    CHECK_FALSE(exists(DeviceMapper::device_path(name)));

    // An origin that is no block device at all (no driver for major 250 in the VM).
    auto no_origin = dm.create_snapshot(name, "", 8, "250:250", b.cow_dev());
    REQUIRE_FALSE(no_origin.ok());
    CHECK(no_origin.error().code() == ENXIO);
    CHECK_FALSE(dm.info(name)->has_value());
    CHECK_FALSE(exists(DeviceMapper::device_path(name)));
}

TEST_CASE("dm: removing a device another process holds open fails with EBUSY in time", "[dm]") {
    auto dm = open_dm();
    const std::string name = dm_name("busy");
    Backing b("busy", wrenn::dm::cow_size_for_origin(kOriginBytes));
    RemoveAtExit guard{dm, name};
    const std::string path = create(dm, name, b);

    int ready[2];
    int release[2];
    REQUIRE(::pipe2(ready, O_CLOEXEC) == 0);
    REQUIRE(::pipe2(release, O_CLOEXEC) == 0);
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        // Only async-signal-safe calls between fork and _exit. Drop the inherited write end
        // of `release`, else the read below never sees EOF.
        ::close(release[1]);
        ::close(ready[0]);
        const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        const char c = fd >= 0 ? 'y' : 'n';
        (void)::write(ready[1], &c, 1);
        char x;
        (void)::read(release[0], &x, 1);  // returns when the parent closes its end
        ::_exit(0);
    }
    ::close(ready[1]);
    ::close(release[0]);
    char c = 0;
    REQUIRE(::read(ready[0], &c, 1) == 1);
    ::close(ready[0]);
    REQUIRE(c == 'y');

    const auto limit = 600ms;
    const auto t0 = std::chrono::steady_clock::now();
    auto busy = dm.remove(name, limit);
    const auto took = std::chrono::steady_clock::now() - t0;
    ::close(release[1]);  // let the child go whatever happened
    int wstatus = 0;
    REQUIRE(::waitpid(child, &wstatus, 0) == child);

    REQUIRE_FALSE(busy.ok());
    CHECK(busy.error().code() == EBUSY);
    CHECK(busy.error().detail() == "open count 1");
    INFO("busy remove took " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
                             << " ms");
    CHECK(took >= limit);
    CHECK(took < limit + 3s);  // one last attempt may overrun a little under TCG
    // Intact: still there, still a snapshot, node still there.
    REQUIRE(dm.info(name)->has_value());
    CHECK(dm.snapshot_status(name)->state == SnapshotStatus::State::Active);
    CHECK(exists(path));

    require_removed(dm, name);
    CHECK_FALSE(exists(path));
}

namespace {

// Writes every 4 KiB block of the snapshot (O_DIRECT), then returns the status.
SnapshotStatus rewrite_everything(DeviceMapper& dm, const std::string& name,
                                  const std::string& path, std::uint64_t bytes) {
    const int fd = ::open(path.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC);
    REQUIRE(fd >= 0);
    Block b(0x3C);
    int failed_writes = 0;
    for (std::uint64_t off = 0; off < bytes; off += kBlock) {
        if (::pwrite(fd, b.data.get(), kBlock, static_cast<off_t>(off)) !=
            static_cast<ssize_t>(kBlock)) {
            ++failed_writes;  // expected only once the snapshot is invalid
        }
    }
    (void)::fsync(fd);
    ::close(fd);
    auto status = dm.snapshot_status(name);
    REQUIRE(status.ok());
    INFO("failed writes: " << failed_writes);
    return *status;
}

}  // namespace

TEST_CASE("dm: rewriting every block of a 16 MiB origin fits the sized CoW", "[dm]") {
    auto dm = open_dm();
    const std::string name = dm_name("rewrite");
    const std::uint64_t cow_bytes = wrenn::dm::cow_size_for_origin(kOriginBytes);
    Backing b("rewrite", cow_bytes);
    RemoveAtExit guard{dm, name};
    const std::string path = create(dm, name, b);

    const SnapshotStatus s = rewrite_everything(dm, name, path, kOriginBytes);
    CHECK(s.state == SnapshotStatus::State::Active);
    CHECK(s.allocated_sectors >= kOriginBytes / 512);
    CHECK(s.total_sectors == cow_bytes / 512);

    // Every block reads back as written.
    const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
    REQUIRE(fd >= 0);
    Block r(0);
    for (std::uint64_t off = 0; off < kOriginBytes; off += 97 * kBlock) {
        REQUIRE(::pread(fd, r.data.get(), kBlock, static_cast<off_t>(off)) ==
                static_cast<ssize_t>(kBlock));
        REQUIRE(r.all(0x3C));
    }
    ::close(fd);
    require_removed(dm, name);
}

TEST_CASE("dm: a CoW as large as the origin (the seed's sizing) is invalidated by a rewrite",
          "[dm]") {
    // The contrast that justifies cow_size_for_origin: metadata chunks do not fit.
    auto dm = open_dm();
    const std::string name = dm_name("seedsize");
    Backing b("seedsize", kOriginBytes);
    RemoveAtExit guard{dm, name};
    const std::string path = create(dm, name, b);
    const SnapshotStatus s = rewrite_everything(dm, name, path, kOriginBytes);
    CHECK(s.state == SnapshotStatus::State::Invalid);
    require_removed(dm, name);
}

TEST_CASE("dm: /dev/mapper nodes appear with create and disappear with remove", "[dm]") {
    auto dm = open_dm();
    INFO("udev managed: " << dm.udev_managed());
    const std::string name = dm_name("node");
    const std::string path = DeviceMapper::device_path(name);
    Backing b("node", wrenn::dm::cow_size_for_origin(kOriginBytes));
    RemoveAtExit guard{dm, name};
    REQUIRE_FALSE(exists(path));

    REQUIRE(create(dm, name, b) == path);
    auto info = dm.info(name);
    REQUIRE(info.ok());
    REQUIRE(info->has_value());
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    CHECK(S_ISBLK(st.st_mode));
    CHECK(major(st.st_rdev) == (*info)->major);
    CHECK(minor(st.st_rdev) == (*info)->minor);
    // The kernel's own node (devtmpfs) for the same device.
    CHECK(exists("/dev/dm-" + std::to_string((*info)->minor)));

    require_removed(dm, name);
    CHECK_FALSE(exists(path));
}
