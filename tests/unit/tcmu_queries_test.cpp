// tcmu::Configfs's queries over the fake configfs.
#include <catch2/catch.hpp>
#include <cerrno>
#include <string>
#include <vector>

#include "tcmu/configfs.hpp"
#include "tcmu/configfs/naming.hpp"
#include "unit/fake_configfs.hpp"

namespace tcmu = wrenn::tcmu;
using namespace wrenn::tcmu::testing;

TEST_CASE("an attached id is reused only for the origin it was attached for", "[tcmu]") {
    FakeKernel kernel;
    REQUIRE(configfs(kernel).attach(request()).ok());
    CHECK(configfs(kernel).check_attached("123", tcmu::identity_of(request())).ok());

    auto other = request();
    other.config_path = "/cfgs/b/config.v1.json";
    auto wrong = configfs(kernel).check_attached("123", tcmu::identity_of(other));
    REQUIRE_FALSE(wrong.ok());
    CHECK(wrong.error().code() == EEXIST);
    CHECK_THAT(wrong.error().message(),
               Catch::Contains("\"overlaybd//cfgs/a/config.v1.json\"") &&
                   Catch::Contains("\"overlaybd//cfgs/b/config.v1.json\""));

    auto sized = request();
    sized.size_bytes = 8192;
    auto size = configfs(kernel).check_attached("123", tcmu::identity_of(sized));
    REQUIRE_FALSE(size.ok());
    CHECK(size.error().code() == EEXIST);
    CHECK_THAT(size.error().message(),
               Catch::Contains("dev_size is 4096") && Catch::Contains("8192"));

    // An attach that finds the id taken by another origin says whose it is and touches nothing.
    kernel.log.clear();
    auto again = configfs(kernel).attach(other);
    REQUIRE_FALSE(again.ok());
    CHECK(again.error().code() == EEXIST);
    CHECK_THAT(again.error().message(), Catch::Contains("overlaybd//cfgs/a/config.v1.json"));
    CHECK(kernel.count("rmdir " + kCore) == 0);
    CHECK(*configfs(kernel).find_attached("123") == kDev + "/sda");
}

TEST_CASE("disk_size reads a disk's size from sysfs, in 512-byte sectors", "[tcmu]") {
    FakeKernel kernel;
    kernel.nodes[kSys + "/class/block/sda/size"] = {FakeKernel::Type::file, "2048\n", true};
    auto size = configfs(kernel).disk_size(kDev + "/sda");
    REQUIRE(size.ok());
    CHECK(*size == 2048 * 512);

    auto missing = configfs(kernel).disk_size(kDev + "/sdb");
    REQUIRE_FALSE(missing.ok());
    CHECK(missing.error().code() == ENOENT);
    CHECK_THAT(missing.error().message(), Catch::Contains("read size of " + kDev + "/sdb"));

    kernel.nodes[kSys + "/class/block/sdc/size"] = {FakeKernel::Type::file, "many\n", true};
    CHECK(configfs(kernel).disk_size(kDev + "/sdc").error().code() == EIO);
}

TEST_CASE("list_attached lists valid ids only, and none before any device was made", "[tcmu]") {
    FakeKernel kernel;
    CHECK(configfs(kernel).list_attached()->empty());
    REQUIRE(configfs(kernel).attach(request()).ok());
    kernel.nodes[kCfg + "/target/core/user_999999999/dev_x1"] = {FakeKernel::Type::dir, "", false};
    kernel.nodes[kCfg + "/target/core/user_999999999/other"] = {FakeKernel::Type::dir, "", false};
    CHECK(*configfs(kernel).list_attached() == std::vector<std::string>{"123"});
    CHECK(configfs(kernel).find_attached("x1").error().code() == EINVAL);
}
