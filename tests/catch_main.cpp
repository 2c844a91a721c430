// The one translation unit that holds Catch2's runner; every test binary links it.
#define CATCH_CONFIG_MAIN
#include <spdlog/spdlog.h>

#include <catch2/catch.hpp>
#include <cstdlib>

namespace {
// Test output shows assertions, not the agent's operation log; WRENN_LOG_LEVEL=debug brings it
// back.
const bool kQuietLogs = [] {
    const char* level = std::getenv("WRENN_LOG_LEVEL");
    spdlog::set_level(level != nullptr ? spdlog::level::from_str(level) : spdlog::level::off);
    return true;
}();
}  // namespace
