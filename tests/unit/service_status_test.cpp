#include "agent/daemon/service_status.hpp"

#include <catch2/catch.hpp>

using namespace wrenn::agent;

TEST_CASE("the STATUS= line: listeners, sandboxes by state, and space when degraded", "[daemon]") {
    ServiceFacts facts;
    facts.addresses = "unix:/run/wrenn/agent.sock";
    CHECK(service_status_text(facts) ==
          "serving on unix:/run/wrenn/agent.sock; 0 running, 0 paused");
    facts.states = {{"running", 12}, {"paused", 3}};
    facts.space.known = true;
    facts.space.space.free_bytes = 8ull << 30;
    CHECK(service_status_text(facts) ==
          "serving on unix:/run/wrenn/agent.sock; 12 running, 3 paused");
    facts.space.level = SpaceLevel::Low;
    CHECK(service_status_text(facts) ==
          "serving on unix:/run/wrenn/agent.sock; 12 running, 3 paused; space degraded: " +
              human_bytes(8ull << 30) + " free");
    facts.space.level = SpaceLevel::Critical;
    facts.space.suspended = 4;
    CHECK_THAT(service_status_text(facts), Catch::EndsWith(" free, 4 suspended"));
    // Not watched (--min-free 0): never degraded.
    facts.space.known = false;
    CHECK(service_status_text(facts) ==
          "serving on unix:/run/wrenn/agent.sock; 12 running, 3 paused");
}
