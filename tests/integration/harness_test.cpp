// Proves the kernel the integration tests run in has what wrenn-agent needs. A missing piece
// fails here, by name, instead of letting later tests fail obscurely (or pass by doing nothing).
#include <libdevmapper.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>

namespace {

bool exists(const char* path) {
    struct stat st {};
    return ::stat(path, &st) == 0;
}

}  // namespace

TEST_CASE("the test kernel has device-mapper, loop, configfs and TCMU", "[harness]") {
    REQUIRE(::geteuid() == 0);
    char version[64] = {};
    REQUIRE(dm_driver_version(version, sizeof version) == 1);
    INFO("device-mapper driver " << version);
    CHECK(exists("/dev/loop-control"));
    CHECK(exists("/sys/kernel/config/target/core"));
    // The loopback fabric's configfs folder appears on first use; the module must be loaded.
    CHECK(exists("/sys/module/tcm_loop"));
    CHECK(exists("/sys/module/target_core_user"));
}
