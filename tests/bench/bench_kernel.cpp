// Times making and tearing down one sandbox's writable root, ours against the seed's way.
//   ours:  sparse CoW file + LoopDevice::attach (rw) + DeviceMapper::create_snapshot;
//          remove = DeviceMapper::remove + loop detached.
//   seed:  truncate; losetup --find --show; dmsetup create --table;
//          remove = dmsetup remove; losetup -d.
// The template loop (read-only origin) is attached once and shared, as the agent does.
// Root and device-mapper needed: run it through scripts/bench-kernel. Runs: WRENN_BENCH_RUNS.
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "dm/device_mapper.hpp"
#include "dm/snapshot_format.hpp"
#include "loop/loop_device.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using wrenn::dm::DeviceMapper;
using wrenn::loop::AttachOptions;
using wrenn::loop::LoopDevice;

constexpr std::uint64_t kTemplateBytes = 64ull << 20;

[[noreturn]] void die(const std::string& what) {
    std::fprintf(stderr, "bench_kernel: %s\n", what.c_str());
    std::exit(1);
}

double ms_since(Clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// Runs a shell command (the seed's way); its first output line, or dies.
std::string run(const std::string& cmd) {
    FILE* p = ::popen(cmd.c_str(), "r");
    if (p == nullptr) {
        die("popen " + cmd);
    }
    char buf[256] = {};
    std::string out;
    if (std::fgets(buf, sizeof buf, p) != nullptr) {
        out = buf;
    }
    while (std::fgets(buf, sizeof buf, p) != nullptr) {
    }
    if (::pclose(p) != 0) {
        die("failed: " + cmd);
    }
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) {
        out.pop_back();
    }
    return out;
}

std::string major_minor(dev_t dev) {
    return std::to_string(major(dev)) + ":" + std::to_string(minor(dev));
}

struct Stats {
    double median;
    double p90;
};

Stats stats(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const auto at = [&](double q) {
        const std::size_t i =
            std::min(v.size() - 1, static_cast<std::size_t>(q * (v.size() - 1) + 0.5));
        return v[i];
    };
    return {at(0.5), at(0.9)};
}

}  // namespace

int main() {
    spdlog::set_level(spdlog::level::warn);
    const char* runs_env = std::getenv("WRENN_BENCH_RUNS");
    const int runs = runs_env != nullptr ? std::atoi(runs_env) : 30;
    const char* prefix_env = std::getenv("WRENN_TEST_PREFIX");
    const std::string prefix = prefix_env != nullptr && *prefix_env ? prefix_env : "bench";
    const std::string dir = "/scratch";

    // The template: a filled image on a shared read-only loop.
    const std::string tmpl = dir + "/" + prefix + "-bench-template.img";
    run("dd if=/dev/urandom of=" + tmpl + " bs=1M count=" + std::to_string(kTemplateBytes >> 20) +
        " status=none && echo ok");
    AttachOptions ro;
    ro.read_only = true;
    auto origin = LoopDevice::attach(tmpl, ro);
    if (!origin) {
        die(origin.error().message());
    }
    const std::uint64_t sectors = origin->size_bytes() / 512;
    const std::uint64_t cow_bytes = wrenn::dm::cow_size_for_origin(origin->size_bytes());
    auto dm = DeviceMapper::open();
    if (!dm) {
        die(dm.error().message());
    }

    std::vector<double> ours_create, ours_remove, seed_create, seed_remove;
    auto ours = [&](int i, bool record) {
        const std::string name = wrenn::dm::device_name(prefix + "-ours-" + std::to_string(i));
        const std::string cow = dir + "/" + prefix + "-ours-" + std::to_string(i) + ".cow";
        auto t0 = Clock::now();
        {
            const int fd = ::open(cow.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
            if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(cow_bytes)) != 0) {
                die("create " + cow);
            }
            ::close(fd);
        }
        auto loop = LoopDevice::attach(cow, AttachOptions{});
        if (!loop) {
            die(loop.error().message());
        }
        auto path = dm->create_snapshot(
            name, wrenn::dm::device_uuid("bench", prefix + "-ours-" + std::to_string(i)), sectors,
            major_minor(origin->device_number()), major_minor(loop->device_number()));
        if (!path) {
            die(path.error().message());
        }
        const double created = ms_since(t0);
        t0 = Clock::now();
        if (auto r = dm->remove(name, std::chrono::seconds(5)); !r) {
            die(r.error().message());
        }
        if (auto r = loop->detach(); !r) {
            die(r.error().message());
        }
        const double removed = ms_since(t0);
        ::unlink(cow.c_str());
        if (record) {
            ours_create.push_back(created);
            ours_remove.push_back(removed);
        }
    };
    auto seed = [&](int i, bool record) {
        const std::string name = wrenn::dm::device_name(prefix + "-seed-" + std::to_string(i));
        const std::string cow = dir + "/" + prefix + "-seed-" + std::to_string(i) + ".cow";
        auto t0 = Clock::now();
        run("truncate -s " + std::to_string(cow_bytes) + " " + cow);
        const std::string loop = run("losetup --find --show " + cow);
        run("dmsetup create " + name + " --table '0 " + std::to_string(sectors) + " snapshot " +
            origin->path() + " " + loop + " P 8'");
        const double created = ms_since(t0);
        t0 = Clock::now();
        run("dmsetup remove " + name);
        run("losetup -d " + loop);
        const double removed = ms_since(t0);
        ::unlink(cow.c_str());
        if (record) {
            seed_create.push_back(created);
            seed_remove.push_back(removed);
        }
    };

    // One warm-up each (page cache, first libdm/dmsetup load), then alternate the order so that
    // neither way always runs first.
    ours(-1, false);
    seed(-1, false);
    for (int i = 0; i < runs; ++i) {
        if (i % 2 == 0) {
            ours(i, true);
            seed(i, true);
        } else {
            seed(i, true);
            ours(i, true);
        }
    }
    (void)origin->detach();
    ::unlink(tmpl.c_str());

    const Stats oc = stats(ours_create), orm = stats(ours_remove);
    const Stats sc = stats(seed_create), srm = stats(seed_remove);
    std::printf("bench-kernel: %d runs, template %llu MiB on %s, CoW %llu bytes (sparse)\n", runs,
                static_cast<unsigned long long>(kTemplateBytes >> 20), origin->path().c_str(),
                static_cast<unsigned long long>(cow_bytes));
    std::printf("%-7s %18s %18s %14s\n", "", "ours median/p90", "seed median/p90", "seed/ours");
    std::printf("%-7s %8.2f/%-8.2f ms %8.2f/%-8.2f ms %8.1fx\n", "create", oc.median, oc.p90,
                sc.median, sc.p90, sc.median / oc.median);
    std::printf("%-7s %8.2f/%-8.2f ms %8.2f/%-8.2f ms %8.1fx\n", "remove", orm.median, orm.p90,
                srm.median, srm.p90, srm.median / orm.median);
    std::printf("%-7s %8.2f ms          %8.2f ms          %8.1fx\n", "total",
                oc.median + orm.median, sc.median + srm.median,
                (sc.median + srm.median) / (oc.median + orm.median));
    // For scripts/bench-all (scripts/lib/results.py): figure, value, goal, met; no goals here.
    const auto result = [](const char* figure, double value) {
        std::printf("RESULT\tkernel: %s\t%.2f\t-\t-\n", figure, value);
    };
    result("create median, ours (ms)", oc.median);
    result("remove median, ours (ms)", orm.median);
    result("create seed/ours", sc.median / oc.median);
    result("remove seed/ours", srm.median / orm.median);
    result("create+remove seed/ours", (sc.median + srm.median) / (oc.median + orm.median));
    return 0;
}
