// Helper for scripts/bench-flatten (runs as root in the VM):
//   flatten_bench prepare DIR NAME   1 GiB template (256 MiB of data) + CoW + snapshot NAME with
//                                    1% of its chunks rewritten; prints the snapshot's device
//   flatten_bench remove NAME        removes the snapshot (its loops autoclear)
//   flatten_bench flatten ARGS...    the agent's offline flatten command
#include <fcntl.h>
#include <libdevmapper.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <random>
#include <string>
#include <unordered_set>
#include <vector>

#include "flatten/cli.hpp"

namespace {

constexpr std::uint64_t kChunk = 4096;
constexpr std::uint64_t kTemplate = 1ull << 30;
constexpr std::uint64_t kData = 256ull << 20;
constexpr std::uint64_t kExtent = 1ull << 20;

[[noreturn]] void die(const std::string& what) {
    std::cerr << "flatten_bench: " << what << ": " << std::strerror(errno) << "\n";
    std::exit(1);
}

struct Attached {
    std::string path;
    int fd;  // autoclear detaches the loop on last close: keep it open until dm holds it
};

// Attaches file to a free loop device with autoclear: it lives while the dm table holds it.
Attached attach(const std::string& file, bool read_only) {
    int backing = ::open(file.c_str(), (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
    int ctl = ::open("/dev/loop-control", O_RDWR | O_CLOEXEC);
    if (backing < 0 || ctl < 0) {
        die("open " + file + " or /dev/loop-control");
    }
    for (int attempt = 0; attempt < 64; ++attempt) {
        const int n = ::ioctl(ctl, LOOP_CTL_GET_FREE);
        const std::string path = "/dev/loop" + std::to_string(n);
        int dev = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
        if (dev < 0) {
            die("open " + path);
        }
        loop_config cfg{};
        cfg.fd = static_cast<__u32>(backing);
        cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR | (read_only ? LO_FLAGS_READ_ONLY : 0);
        const int rc = ::ioctl(dev, LOOP_CONFIGURE, &cfg);
        const int err = errno;
        if (rc == 0) {
            ::close(ctl);
            ::close(backing);
            return {path, dev};
        }
        ::close(dev);
        if (err != EBUSY) {
            errno = err;
            die("LOOP_CONFIGURE " + path);
        }
    }
    die("no free loop device");
}

void write_all(int fd, const std::vector<std::byte>& buf, std::uint64_t off) {
    if (::pwrite(fd, buf.data(), buf.size(), static_cast<off_t>(off)) !=
        static_cast<ssize_t>(buf.size())) {
        die("write at " + std::to_string(off));
    }
}

void fill(std::vector<std::byte>& buf, std::mt19937_64& rng) {
    for (std::size_t i = 0; i < buf.size(); i += 8) {
        const std::uint64_t v = rng();
        std::memcpy(buf.data() + i, &v, 8);
    }
}

int prepare(const std::string& dir, const std::string& name) {
    std::mt19937_64 rng(42);
    const std::string tmpl = dir + "/template.img";
    const std::string cow = dir + "/cow";
    int fd = ::open(tmpl.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(kTemplate)) != 0) {
        die("create " + tmpl);
    }
    // 256 MiB of data in 1 MiB extents spread over the 1 GiB, holes between.
    std::vector<std::uint64_t> slots(kTemplate / kExtent);
    for (std::size_t i = 0; i < slots.size(); ++i) {
        slots[i] = i;
    }
    std::shuffle(slots.begin(), slots.end(), rng);
    std::vector<std::byte> extent(kExtent);
    for (std::uint64_t i = 0; i < kData / kExtent; ++i) {
        fill(extent, rng);
        write_all(fd, extent, slots[i] * kExtent);
    }
    if (::fsync(fd) != 0) {
        die("fsync " + tmpl);
    }
    ::close(fd);
    const std::uint64_t chunks = kTemplate / kChunk;
    const std::uint64_t cow_bytes = (1 + (chunks + 255) / 256 + chunks + 257) * kChunk;
    fd = ::open(cow.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(cow_bytes)) != 0) {
        die("create " + cow);
    }
    ::close(fd);

    const Attached origin_loop = attach(tmpl, true);
    const Attached cow_loop = attach(cow, false);
    const std::string params = origin_loop.path + " " + cow_loop.path + " P 8";
    dm_udev_set_sync_support(0);
    dm_task* t = dm_task_create(DM_DEVICE_CREATE);
    dm_info info{};
    if (t == nullptr || dm_task_set_name(t, name.c_str()) != 1 ||
        dm_task_add_target(t, 0, kTemplate / 512, "snapshot", params.c_str()) != 1 ||
        dm_task_run(t) != 1 || dm_task_get_info(t, &info) != 1) {
        die("create snapshot " + name + " (" + params + ")");
    }
    dm_task_destroy(t);
    ::close(origin_loop.fd);
    ::close(cow_loop.fd);
    const std::string dev = "/dev/dm-" + std::to_string(info.minor);

    // 1% of the chunks rewritten, each once, at random.
    fd = ::open(dev.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        die("open " + dev);
    }
    std::unordered_set<std::uint64_t> picked;
    std::vector<std::byte> block(kChunk);
    while (picked.size() < chunks / 100) {
        const std::uint64_t c = rng() % chunks;
        if (picked.insert(c).second) {
            fill(block, rng);
            write_all(fd, block, c * kChunk);
        }
    }
    if (::fsync(fd) != 0) {
        die("fsync " + dev);
    }
    ::close(fd);
    std::cout << dev << "\n";
    return 0;
}

int remove(const std::string& name) {
    dm_udev_set_sync_support(0);
    dm_task* t = dm_task_create(DM_DEVICE_REMOVE);
    if (t == nullptr || dm_task_set_name(t, name.c_str()) != 1 || dm_task_retry_remove(t) != 1 ||
        dm_task_run(t) != 1) {
        die("remove " + name);
    }
    dm_task_destroy(t);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    if (args.size() == 3 && args[0] == "prepare") {
        return prepare(args[1], args[2]);
    }
    if (args.size() == 2 && args[0] == "remove") {
        return remove(args[1]);
    }
    if (!args.empty() && args[0] == "flatten") {
        return wrenn::flatten::run_cli(args, std::cout, std::cerr);
    }
    std::cerr << "usage: flatten_bench prepare DIR NAME | remove NAME | flatten ARGS...\n";
    return 2;
}
