// tcmu::Configfs::detach and detach_unused over the fake configfs: reverse order, idempotent,
// never another's device nor a disk in use.
#include <catch2/catch.hpp>
#include <cerrno>
#include <string>
#include <vector>

#include "tcmu/configfs.hpp"
#include "tcmu/configfs/naming.hpp"
#include "unit/fake_configfs.hpp"

namespace tcmu = wrenn::tcmu;
using namespace wrenn::tcmu::testing;

TEST_CASE("detach removes everything in reverse order and is idempotent", "[tcmu]") {
    FakeKernel kernel;
    REQUIRE(configfs(kernel).attach(request()).ok());
    kernel.log.clear();
    REQUIRE(configfs(kernel).detach("123").ok());
    CHECK(kernel.log == kDetachSequence);
    CHECK(kernel.leftovers().empty());
    CHECK_FALSE(configfs(kernel).find_attached("123")->has_value());
    CHECK(configfs(kernel).list_attached()->empty());

    kernel.log.clear();
    CHECK(configfs(kernel).detach("123").ok());
    CHECK(kernel.log == kDetachSequence);
    CHECK(configfs(kernel).detach("999").ok());  // never attached
}

TEST_CASE("detach reports a failure other than a missing part, with its path", "[tcmu]") {
    FakeKernel kernel;
    REQUIRE(configfs(kernel).attach(request()).ok());
    kernel.fail_at = static_cast<int>(kernel.log.size()) + 5;  // rmdir of the core device
    kernel.fail_errno = EBUSY;
    auto r = configfs(kernel).detach("123");
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code() == EBUSY);
    CHECK_THAT(r.error().message(),
               Catch::StartsWith("detach tcmu device 123: injected rmdir " + kCore));
    CHECK(configfs(kernel).detach("123").ok());  // the next try finishes the job
    CHECK(kernel.leftovers().empty());
}

TEST_CASE("detach refuses while device-mapper holds the disk", "[tcmu]") {
    FakeKernel kernel;
    REQUIRE(*configfs(kernel).attach(request()) == kDev + "/sda");
    kernel.nodes[kSys + "/class/block/sda/holders/dm-3"] = {FakeKernel::Type::link, "", true};
    kernel.log.clear();
    auto r = configfs(kernel).detach("123");
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code() == EBUSY);
    CHECK(r.error().message() ==
          "detach tcmu device 123: device busy (" + kDev + "/sda is held by dm-3)");
    CHECK(kernel.count("unlink " + kTarget + "/tpgt_1/lun/lun_0/dev_123") == 0);
    kernel.nodes.erase(kSys + "/class/block/sda/holders/dm-3");
    CHECK(configfs(kernel).detach("123").ok());
}

TEST_CASE("detach for an origin refuses a device attached for another", "[tcmu]") {
    FakeKernel kernel;
    REQUIRE(configfs(kernel).attach(request()).ok());
    auto other = request();
    other.handler = "qcow";
    kernel.log.clear();
    auto r = configfs(kernel).detach("123", tcmu::identity_of(other));
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code() == EEXIST);
    CHECK_THAT(r.error().message(), Catch::Contains("qcow//cfgs/a/config.v1.json"));
    for (const auto& entry : kernel.log) {
        CHECK_FALSE(starts_with(entry, "rmdir"));
        CHECK_FALSE(starts_with(entry, "unlink"));
    }
    CHECK(configfs(kernel).detach("123", tcmu::identity_of(request())).ok());
    CHECK(kernel.leftovers().empty());
    // Gone already: nothing to compare, and detaching again succeeds.
    CHECK(configfs(kernel).detach("123", tcmu::identity_of(other)).ok());
}

TEST_CASE("detach refuses while the disk is mounted or open exclusively", "[tcmu]") {
    FakeKernel kernel;
    REQUIRE(*configfs(kernel).attach(request()) == kDev + "/sda");
    kernel.busy.insert(kDev + "/sda");
    kernel.log.clear();
    auto r = configfs(kernel).detach("123", tcmu::identity_of(request()));
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code() == EBUSY);
    CHECK_THAT(r.error().message(), Catch::Contains(kDev + "/sda is mounted or open exclusively"));
    CHECK(kernel.count("unlink " + kTarget + "/tpgt_1/lun/lun_0/dev_123") == 0);
    CHECK(configfs(kernel).detach("123").error().code() == EBUSY);
    kernel.busy.clear();
    CHECK(configfs(kernel).detach("123").ok());
}

TEST_CASE("detach_unused detaches only our unused devices, never one in use or another's",
          "[tcmu]") {
    const std::string tag = "0123456789abcdef";
    FakeKernel kernel;
    auto attach = [&](const std::string& id, const std::string& serial) {
        auto req = request();
        req.id = id;
        req.serial = serial;
        auto disk = configfs(kernel).attach(req);
        REQUIRE(disk.ok());
        return *disk;
    };
    attach("1", tcmu::owner_serial(tag, "1"));                 // ours, unused: detached
    attach("2", tcmu::owner_serial(tag, "2"));                 // ours, held by a sandbox
    attach("3", tcmu::owner_serial("fedcba9876543210", "3"));  // another state dir's
    attach("4", "");                                           // the operator's, or overlaybd's
    const std::string held = attach("5", tcmu::owner_serial(tag, "5"));  // ours, dm holds it
    attach("6", tcmu::owner_serial(tag, "7"));  // our tag but another id's serial: not ours
    kernel.nodes[kSys + "/class/block/" + held.substr(held.rfind('/') + 1) + "/holders/dm-0"] = {
        FakeKernel::Type::link, "", true};

    auto swept = configfs(kernel).detach_unused(tag, {"2"});
    REQUIRE(swept.ok());
    CHECK(swept->detached == std::vector<std::string>{"1"});
    REQUIRE(swept->left.size() == 1);
    CHECK(swept->left[0].code() == EBUSY);
    CHECK_THAT(swept->left[0].message(), Catch::Contains("is held by dm-0"));
    CHECK(*configfs(kernel).list_attached() == std::vector<std::string>{"2", "3", "4", "5", "6"});

    // Without a tag nothing is known to be ours.
    CHECK(configfs(kernel).detach_unused("", {})->detached.empty());
    CHECK(configfs(kernel).list_attached()->size() == 5);
}
