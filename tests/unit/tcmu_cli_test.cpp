// `wrenn-agent tcmu attach|detach` over the fake configfs.
#include <spdlog/spdlog.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <sstream>
#include <string>
#include <vector>

#include "tcmu/cli.hpp"
#include "tcmu/configfs.hpp"
#include "tcmu/configfs/naming.hpp"
#include "unit/fake_configfs.hpp"

namespace tcmu = wrenn::tcmu;
using namespace wrenn::tcmu::testing;

TEST_CASE("the tcmu CLI attaches, detaches and explains its usage", "[tcmu]") {
    FakeKernel kernel;
    auto fs = configfs(kernel);
    std::ostringstream out, err;
    int rc = tcmu::run_cli({"attach", "--id", "123", "--config", "/x/img.qcow2", "--handler",
                            "qcow", "--size", "1048576"},
                           out, err, fs);
    CHECK(rc == 0);
    CHECK(out.str() == kDev + "/sda\n");
    CHECK(kernel.count("write " + kCore + "/control dev_size=1048576") == 1);
    CHECK(kernel.count("write " + kCore + "/control dev_config=qcow//x/img.qcow2") == 1);

    out.str("");
    CHECK(tcmu::run_cli({"detach", "--id", "123", "-v"}, out, err, fs) == 0);
    CHECK(spdlog::get_level() == spdlog::level::debug);
    spdlog::set_level(spdlog::level::info);
    CHECK(kernel.leftovers().empty());

    kernel.disk_appears = false;
    err.str("");
    CHECK(tcmu::run_cli({"attach", "--id", "5", "--config", "/x/c.json"}, out, err, fs) == 1);
    CHECK_THAT(err.str(), Catch::Contains("no block device"));

    err.str("");
    CHECK(tcmu::run_cli({"attach", "--id", "5"}, out, err, fs) == 2);
    CHECK_THAT(err.str(), Catch::Contains("config"));
    CHECK(tcmu::run_cli({"detach"}, out, err, fs) == 2);
    CHECK(tcmu::run_cli({"frobnicate"}, out, err, fs) == 2);
    out.str("");
    CHECK(tcmu::run_cli({"--help"}, out, err, fs) == 0);
    CHECK_THAT(out.str(), Catch::Contains("tcmu attach --id ID --config FILE"));
    out.str("");
    CHECK(tcmu::run_cli({"attach", "--help"}, out, err, fs) == 0);
    CHECK_THAT(out.str(), Catch::Contains("--handler"));
}

TEST_CASE("the CLI without a backstore exits 1 naming the handler and the backstore", "[tcmu]") {
    FakeKernel kernel;
    kernel.handler_running = false;
    auto opts = fake_options();
    opts.attempts = 5;
    auto fs = configfs(kernel, opts);
    std::ostringstream out, err;
    CHECK(tcmu::run_cli({"attach", "--id", "4242", "--config", "/x/base.qcow2", "--handler", "qcow",
                         "--size", "33554432"},
                        out, err, fs) == 1);
    CHECK_THAT(err.str(), Catch::Contains("start tcmu-runner, the backstore of the qcow handler"));
    CHECK(kernel.slept <= opts.handler_wait + opts.handler_poll);
    CHECK(kernel.leftovers().empty());
}

// ---- The device's serial: the agent's mark. -----------------------------------------------------
