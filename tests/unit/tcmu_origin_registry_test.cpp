// OriginRegistry's counting, adoption and cleanup over fake origin devices: no root, no kernel.
#include <atomic>
#include <catch2/catch.hpp>
#include <cerrno>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "tcmu/configfs/naming.hpp"
#include "tcmu/origin_registry.hpp"

namespace {

using wrenn::Error;
using wrenn::Result;
using wrenn::tcmu::AttachRequest;
using wrenn::tcmu::DeviceIdentity;
using wrenn::tcmu::OriginDevices;
using wrenn::tcmu::OriginRegistry;
using wrenn::tcmu::UnusedDetached;

// The devices, by id, and what was asked of them; shared with the test, which keeps it alive
// past the registry.
struct Ledger {
    struct Device {
        DeviceIdentity origin;
        std::string disk;
    };
    std::mutex mutex;
    std::map<std::string, Device> devices;
    std::vector<AttachRequest> attaches;
    std::vector<std::string> detaches;  // ids
    std::vector<std::string> in_use;    // what the last detach_unused was given
    int fail_attach = 0;                // errno for the next attach; 0 = succeed
    int fail_size = 0;                  // errno for the next disk_size
    int fail_detach = 0;                // errno for the next detach
    int next_disk = 0;
};

class FakeDevices final : public OriginDevices {
  public:
    explicit FakeDevices(Ledger& ledger) : l_(ledger) {}
    Result<std::optional<std::string>> find(std::string_view id) override {
        std::lock_guard lock(l_.mutex);
        auto it = l_.devices.find(std::string(id));
        return it == l_.devices.end() ? std::nullopt : std::optional(it->second.disk);
    }
    Result<void> check(std::string_view id, const DeviceIdentity& origin) override {
        std::lock_guard lock(l_.mutex);
        auto it = l_.devices.find(std::string(id));
        if (it == l_.devices.end()) {
            return Error("check " + std::string(id), ENOENT);
        }
        if (!(it->second.origin == origin)) {
            return Error("check " + std::string(id), EEXIST, "another origin's");
        }
        return {};
    }
    Result<std::string> attach(const AttachRequest& request) override {
        std::lock_guard lock(l_.mutex);
        l_.attaches.push_back(request);
        if (l_.fail_attach != 0) {
            return Error("attach " + request.id, std::exchange(l_.fail_attach, 0));
        }
        std::string disk = "/dev/sd" + std::to_string(l_.next_disk++);
        l_.devices[request.id] = {wrenn::tcmu::identity_of(request), disk};
        return disk;
    }
    Result<void> detach(std::string_view id, const DeviceIdentity& origin) override {
        std::lock_guard lock(l_.mutex);
        l_.detaches.emplace_back(id);
        if (l_.fail_detach != 0) {
            return Error("detach " + std::string(id), std::exchange(l_.fail_detach, 0));
        }
        auto it = l_.devices.find(std::string(id));
        if (it != l_.devices.end() && !(it->second.origin == origin)) {
            return Error("detach " + std::string(id), EEXIST);
        }
        l_.devices.erase(std::string(id));
        return {};
    }
    Result<std::uint64_t> disk_size(const std::string& disk) override {
        std::lock_guard lock(l_.mutex);
        if (l_.fail_size != 0) {
            return Error("read size of " + disk, std::exchange(l_.fail_size, 0));
        }
        return std::uint64_t{1} << 20;
    }
    Result<UnusedDetached> detach_unused(std::string_view,
                                         const std::vector<std::string>& in_use) override {
        std::lock_guard lock(l_.mutex);
        l_.in_use = in_use;
        return UnusedDetached{};
    }

  private:
    Ledger& l_;
};

const DeviceIdentity kA{"overlaybd", "/cfgs/a/config.v1.json", std::nullopt};
const DeviceIdentity kB{"qcow", "/img/b.qcow2", 1U << 20};

std::string id_of(const DeviceIdentity& o) {
    return wrenn::tcmu::id_for_origin(o.handler, o.config_path, o.size_bytes);
}

OriginRegistry make_registry(Ledger& ledger, std::string tag = "0123456789abcdef") {
    wrenn::tcmu::OriginPolicy policy;
    policy.config_dirs = {"/cfgs"};
    return OriginRegistry(std::make_unique<FakeDevices>(ledger),
                          OriginRegistry::Options{std::move(tag), policy});
}

}  // namespace

TEST_CASE("origin registry: N acquires of one origin attach once, marked as ours",
          "[origin_registry]") {
    Ledger ledger;
    auto registry = make_registry(ledger);
    std::string first;
    for (int i = 0; i < 5; ++i) {
        auto disk = registry.acquire(kA);
        REQUIRE(disk.ok());
        if (i == 0) {
            first = disk->device;
        }
        CHECK(disk->device == first);
        CHECK(disk->size_bytes == 1U << 20);
    }
    REQUIRE(ledger.attaches.size() == 1);
    const AttachRequest& req = ledger.attaches[0];
    CHECK(req.id == id_of(kA));
    CHECK(req.handler == "overlaybd");
    CHECK(req.config_path == kA.config_path);
    CHECK_FALSE(req.size_bytes.has_value());
    CHECK(req.serial == wrenn::tcmu::owner_serial("0123456789abcdef", id_of(kA)));
    REQUIRE(req.api_policy.has_value());
    CHECK(req.api_policy->config_dirs == std::vector<std::string>{"/cfgs"});
    CHECK(registry.references(kA) == 5);
    CHECK(registry.attached() == 1);

    // Another handler or size is another device.
    auto other = registry.acquire(kB);
    REQUIRE(other.ok());
    CHECK(other->device != first);
    CHECK(ledger.attaches.back().size_bytes == kB.size_bytes);
    CHECK(registry.attached() == 2);
    auto entries = registry.entries();
    REQUIRE(entries.size() == 2);
}

TEST_CASE("origin registry: the last release detaches the device", "[origin_registry]") {
    Ledger ledger;
    auto registry = make_registry(ledger);
    REQUIRE(registry.acquire(kA).ok());
    REQUIRE(registry.acquire(kA).ok());
    registry.release(kA);
    CHECK(ledger.detaches.empty());
    CHECK(registry.references(kA) == 1);
    registry.release(kA);
    CHECK(ledger.detaches == std::vector<std::string>{id_of(kA)});
    CHECK(ledger.devices.empty());
    CHECK(registry.attached() == 0);
    CHECK(registry.entries().empty());

    // Releasing what is not held is ignored; a later acquire attaches afresh.
    registry.release(kA);
    CHECK(ledger.detaches.size() == 1);
    REQUIRE(registry.acquire(kA).ok());
    CHECK(ledger.attaches.size() == 2);
}

TEST_CASE("origin registry: a failed detach on release is logged and forgotten",
          "[origin_registry]") {
    Ledger ledger;
    auto registry = make_registry(ledger);
    REQUIRE(registry.acquire(kA).ok());
    ledger.fail_detach = EBUSY;
    registry.release(kA);
    CHECK(registry.attached() == 0);
    CHECK(ledger.devices.count(id_of(kA)) == 1);  // the device stays
    // The next acquire adopts it again.
    REQUIRE(registry.acquire(kA).ok());
    CHECK(ledger.attaches.size() == 1);
}

TEST_CASE("origin registry: a device already attached for the origin is adopted",
          "[origin_registry]") {
    Ledger ledger;
    ledger.devices[id_of(kA)] = {kA, "/dev/sdz"};
    auto registry = make_registry(ledger);
    auto disk = registry.acquire(kA);
    REQUIRE(disk.ok());
    CHECK(disk->device == "/dev/sdz");
    CHECK(ledger.attaches.empty());
    registry.release(kA);
    CHECK(ledger.detaches == std::vector<std::string>{id_of(kA)});
}

TEST_CASE("origin registry: a device under the legacy id is adopted only when it is this origin's",
          "[origin_registry]") {
    const std::string legacy = wrenn::tcmu::legacy_id_for_config(kA.config_path);
    SECTION("this origin's: adopted under the legacy id, and detached under it") {
        Ledger ledger;
        ledger.devices[legacy] = {kA, "/dev/sdy"};
        auto registry = make_registry(ledger);
        auto disk = registry.acquire(kA);
        REQUIRE(disk.ok());
        CHECK(disk->device == "/dev/sdy");
        CHECK(ledger.attaches.empty());
        registry.release(kA);
        CHECK(ledger.detaches == std::vector<std::string>{legacy});
    }
    SECTION("another origin's: left alone, and a new device attached at the new id") {
        Ledger ledger;
        DeviceIdentity other = kA;
        other.size_bytes = 4096;
        ledger.devices[legacy] = {other, "/dev/sdy"};
        auto registry = make_registry(ledger);
        auto disk = registry.acquire(kA);
        REQUIRE(disk.ok());
        CHECK(disk->device != "/dev/sdy");
        REQUIRE(ledger.attaches.size() == 1);
        CHECK(ledger.attaches[0].id == id_of(kA));
        CHECK(ledger.devices.count(legacy) == 1);
    }
}

TEST_CASE("origin registry: a device at the id attached for another origin is refused",
          "[origin_registry]") {
    Ledger ledger;
    DeviceIdentity other = kA;
    other.config_path = "/cfgs/other.json";
    ledger.devices[id_of(kA)] = {other, "/dev/sdx"};
    auto registry = make_registry(ledger);
    auto disk = registry.acquire(kA);
    REQUIRE_FALSE(disk.ok());
    CHECK(disk.error().code() == EEXIST);
    CHECK_THAT(disk.error().message(), Catch::Contains("use TCMU origin " + kA.config_path));
    CHECK(ledger.attaches.empty());
    CHECK(ledger.detaches.empty());
    CHECK(registry.attached() == 0);
}

TEST_CASE("origin registry: a failed attach propagates and is not cached", "[origin_registry]") {
    Ledger ledger;
    auto registry = make_registry(ledger);
    ledger.fail_attach = ETIMEDOUT;
    auto disk = registry.acquire(kA);
    REQUIRE_FALSE(disk.ok());
    CHECK(disk.error().code() == ETIMEDOUT);
    CHECK(registry.attached() == 0);
    CHECK(registry.references(kA) == 0);
    REQUIRE(registry.acquire(kA).ok());
    CHECK(ledger.attaches.size() == 2);
    CHECK(registry.references(kA) == 1);
}

TEST_CASE("origin registry: a disk whose size cannot be read is let go only if attached here",
          "[origin_registry]") {
    SECTION("attached here: detached again") {
        Ledger ledger;
        auto registry = make_registry(ledger);
        ledger.fail_size = EIO;
        auto disk = registry.acquire(kA);
        REQUIRE_FALSE(disk.ok());
        CHECK(disk.error().code() == EIO);
        CHECK_THAT(disk.error().message(), Catch::Contains("use TCMU origin " + kA.config_path));
        CHECK(ledger.detaches == std::vector<std::string>{id_of(kA)});
        CHECK(ledger.devices.empty());
        CHECK(registry.attached() == 0);
    }
    SECTION("adopted: left as it was") {
        Ledger ledger;
        ledger.devices[id_of(kA)] = {kA, "/dev/sdz"};
        auto registry = make_registry(ledger);
        ledger.fail_size = EIO;
        REQUIRE_FALSE(registry.acquire(kA).ok());
        CHECK(ledger.detaches.empty());
        CHECK(ledger.devices.count(id_of(kA)) == 1);
    }
}

TEST_CASE("origin registry: without an owner tag no serial is written", "[origin_registry]") {
    Ledger ledger;
    auto registry = make_registry(ledger, "");
    REQUIRE(registry.acquire(kA).ok());
    REQUIRE(ledger.attaches.size() == 1);
    CHECK(ledger.attaches[0].serial.empty());
}

TEST_CASE("origin registry: boot cleanup detaches only what is attached for each origin",
          "[origin_registry]") {
    Ledger ledger;
    DeviceIdentity foreign = kB;
    foreign.size_bytes = 512;
    ledger.devices[id_of(kA)] = {kA, "/dev/sda"};
    ledger.devices[wrenn::tcmu::legacy_id_for_config(kB.config_path)] = {kB, "/dev/sdb"};
    const DeviceIdentity kC{"qcow", "/img/c.qcow2", 4096};
    ledger.devices[id_of(kC)] = {foreign, "/dev/sdc"};  // another origin's, at kC's id
    const DeviceIdentity kD{"overlaybd", "/cfgs/d.json", std::nullopt};  // nothing attached
    auto registry = make_registry(ledger);
    auto detached = registry.detach({kA, kB, kC, kD});
    REQUIRE(detached.ok());
    CHECK(*detached == 2);
    CHECK(ledger.detaches ==
          std::vector<std::string>{id_of(kA), wrenn::tcmu::legacy_id_for_config(kB.config_path)});
    CHECK(ledger.devices.size() == 1);
    CHECK(ledger.devices.count(id_of(kC)) == 1);

    // A detach that fails stops the cleanup with its error.
    ledger.devices[id_of(kA)] = {kA, "/dev/sda"};
    ledger.fail_detach = EBUSY;
    auto busy = registry.detach({kA});
    REQUIRE_FALSE(busy.ok());
    CHECK(busy.error().code() == EBUSY);
}

TEST_CASE("origin registry: detach_unused spares the ids of the origins held",
          "[origin_registry]") {
    Ledger ledger;
    auto registry = make_registry(ledger);
    REQUIRE(registry.acquire(kA).ok());
    REQUIRE(registry.acquire(kB).ok());
    registry.release(kB);
    REQUIRE(registry.detach_unused().ok());
    CHECK(ledger.in_use == std::vector<std::string>{id_of(kA)});
}

TEST_CASE("origin registry: 8 threads acquiring and releasing stay consistent",
          "[origin_registry]") {
    Ledger ledger;
    auto registry = make_registry(ledger);
    const std::vector<DeviceIdentity> origins = {kA, kB};
    constexpr int kThreads = 8;
    constexpr int kCycles = 500;
    std::atomic<int> failures{0};
    std::atomic<int> mismatches{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < kCycles; ++i) {
                const DeviceIdentity& origin = origins[static_cast<std::size_t>(t + i) % 2];
                auto first = registry.acquire(origin);
                auto second = registry.acquire(origin);
                if (!first.ok() || !second.ok()) {
                    ++failures;
                    continue;
                }
                if (first->device != second->device) {
                    ++mismatches;
                }
                registry.release(origin);
                registry.release(origin);
            }
        });
    }
    for (auto& thread : threads) {
        thread.join();
    }
    CHECK(failures == 0);
    CHECK(mismatches == 0);
    CHECK(registry.attached() == 0);
    CHECK(registry.entries().empty());
    CHECK(ledger.devices.empty());
    CHECK(ledger.attaches.size() == ledger.detaches.size());
}
