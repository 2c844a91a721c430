#include <sys/resource.h>

#include <catch2/catch.hpp>

#include "agent/daemon/fd_limit.hpp"

using namespace wrenn::agent;

TEST_CASE("the open-file limit must hold every listener's connections and a reserve", "[cli]") {
    CHECK_FALSE(fd_budget_problem(65536, 1, 256));
    CHECK_FALSE(fd_budget_problem(256 * 2 + kFdReserve, 2, 256));
    auto short_by_one = fd_budget_problem(256 * 2 + kFdReserve - 1, 2, 256);
    REQUIRE(short_by_one);
    CHECK_THAT(*short_by_one, Catch::Contains("LimitNOFILE") &&
                                  Catch::Contains("--max-connections") &&
                                  Catch::Contains(std::to_string(256 * 2 + kFdReserve)));
    CHECK(fd_budget_problem(1024, 1, 256));  // the usual default soft limit is too low
}

TEST_CASE("at start the soft open-file limit is raised to the hard one", "[cli]") {
    rlimit before{};
    REQUIRE(::getrlimit(RLIMIT_NOFILE, &before) == 0);
    rlimit lowered = before;
    lowered.rlim_cur = std::min<rlim_t>(before.rlim_max, 512);
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &lowered) == 0);
    const auto soft = raise_fd_limit(1, 256);
    rlimit after{};
    REQUIRE(::getrlimit(RLIMIT_NOFILE, &after) == 0);
    CHECK(after.rlim_cur == before.rlim_max);
    CHECK(soft == static_cast<std::uint64_t>(after.rlim_cur));
    ::setrlimit(RLIMIT_NOFILE, &before);
}
