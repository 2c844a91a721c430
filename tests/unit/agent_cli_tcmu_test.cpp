// The serve flags that allow TCMU origins from the API.
#include <catch2/catch.hpp>

#include "agent/cli/cli.hpp"

using namespace wrenn::agent;

TEST_CASE("TCMU origins are off by default; overlaybd is the default handler", "[cli]") {
    auto cmd = parse_command_line({"serve"});
    REQUIRE(std::holds_alternative<ServeOptions>(cmd));
    CHECK(std::get<ServeOptions>(cmd).tcmu_config_dirs.empty());
    CHECK(std::get<ServeOptions>(cmd).tcmu_handlers == std::vector<std::string>{"overlaybd"});
}

TEST_CASE("the TCMU flags repeat: --tcmu-config-dir and --tcmu-handler", "[cli]") {
    auto cmd =
        parse_command_line({"--tcmu-config-dir", "/srv/obd/", "--tcmu-config-dir", "/opt/img",
                            "--tcmu-handler", "qcow", "--tcmu-handler", "overlaybd"});
    REQUIRE(std::holds_alternative<ServeOptions>(cmd));
    const auto& o = std::get<ServeOptions>(cmd);
    CHECK(o.tcmu_config_dirs == std::vector<std::string>{"/srv/obd", "/opt/img"});
    CHECK(o.tcmu_handlers == std::vector<std::string>{"qcow", "overlaybd"});
}

TEST_CASE("bad TCMU flags are usage errors that say why", "[cli]") {
    for (const auto& args : {std::vector<std::string>{"--tcmu-config-dir", "relative"},
                             std::vector<std::string>{"--tcmu-config-dir", "/srv/../etc"},
                             std::vector<std::string>{"--tcmu-handler", "a,b"},
                             std::vector<std::string>{"--tcmu-handler", ""}}) {
        auto cmd = parse_command_line(args);
        REQUIRE(std::holds_alternative<PrintAndExit>(cmd));
        CHECK(std::get<PrintAndExit>(cmd).status == 2);
        CHECK_THAT(std::get<PrintAndExit>(cmd).text, Catch::Contains("--tcmu-"));
    }
    auto help = parse_command_line({"--help"});
    REQUIRE(std::holds_alternative<PrintAndExit>(help));
    CHECK_THAT(std::get<PrintAndExit>(help).text,
               Catch::Contains("--tcmu-config-dir") && Catch::Contains("--tcmu-handler"));
}
