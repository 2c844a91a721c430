#include <catch2/catch.hpp>

#include "agent/cli/cli.hpp"
#include "agent/daemon/logging.hpp"

using namespace wrenn::agent;

TEST_CASE("serve is the default and has the documented defaults", "[cli]") {
    for (const auto& args : {std::vector<std::string>{}, std::vector<std::string>{"serve"}}) {
        auto cmd = parse_command_line(args);
        REQUIRE(std::holds_alternative<ServeOptions>(cmd));
        const auto& o = std::get<ServeOptions>(cmd);
        CHECK(o.listen == std::vector<std::string>{"unix:/run/wrenn/agent.sock"});
        CHECK_FALSE(o.insecure_tcp);
        CHECK(o.max_connections == 256);
        CHECK(o.auth_timeout == std::chrono::seconds(10));
        CHECK(o.state_dir == "/var/lib/wrenn");
        CHECK(o.templates_dir == "/var/lib/wrenn/templates");
        CHECK_FALSE(o.cleanup_stale);
        CHECK_FALSE(o.token_file);
    }
}

TEST_CASE("options are parsed; --listen repeats and replaces the default", "[cli]") {
    auto cmd = parse_command_line({"serve", "--listen", "127.0.0.1:8080", "--listen",
                                   "unix:/run/w.sock", "--state-dir", "/srv/w", "--log-format",
                                   "json", "--token-file", "/etc/t"});
    REQUIRE(std::holds_alternative<ServeOptions>(cmd));
    const auto& o = std::get<ServeOptions>(cmd);
    CHECK(o.listen == std::vector<std::string>{"127.0.0.1:8080", "unix:/run/w.sock"});
    CHECK(o.templates_dir == "/srv/w/templates");
    CHECK(o.log_format == "json");
    CHECK(o.token_file == "/etc/t");
}

TEST_CASE("the cleanup-stale, help and version flags, and usage errors", "[cli]") {
    auto cleanup = parse_command_line({"--cleanup-stale", "--state-dir", "/x"});
    REQUIRE(std::holds_alternative<ServeOptions>(cleanup));
    CHECK(std::get<ServeOptions>(cleanup).cleanup_stale);
    auto help = parse_command_line({"--help"});
    REQUIRE(std::holds_alternative<PrintAndExit>(help));
    CHECK(std::get<PrintAndExit>(help).status == 0);
    CHECK_THAT(std::get<PrintAndExit>(help).text,
               Catch::Contains("--cleanup-stale") && Catch::Contains("curl"));
    auto version = parse_command_line({"--version"});
    // The release and the revision the binary was built from (git describe, or "unknown").
    CHECK_THAT(
        std::get<PrintAndExit>(version).text,
        Catch::Matches("wrenn-agent [0-9]+\\.[0-9]+\\.[0-9]+ \\(revision [0-9A-Za-z._-]+\\)\n"));
    auto bad = parse_command_line({"--no-such-flag"});
    REQUIRE(std::holds_alternative<PrintAndExit>(bad));
    CHECK(std::get<PrintAndExit>(bad).status == 2);
    CHECK_THAT(std::get<PrintAndExit>(bad).text, Catch::Contains("no-such-flag"));
    auto format = parse_command_line({"--log-format", "xml"});
    CHECK(std::get<PrintAndExit>(format).status == 2);
}

TEST_CASE("the flags --insecure-tcp and --max-connections", "[cli]") {
    auto cmd = parse_command_line(
        {"--listen", "127.0.0.1:7070", "--insecure-tcp", "--max-connections", "32"});
    REQUIRE(std::holds_alternative<ServeOptions>(cmd));
    CHECK(std::get<ServeOptions>(cmd).insecure_tcp);
    CHECK(std::get<ServeOptions>(cmd).max_connections == 32);
    for (const char* bad : {"0", "65537", "-1", "many"}) {
        INFO(bad);
        auto refused = parse_command_line({"--max-connections", bad});
        REQUIRE(std::holds_alternative<PrintAndExit>(refused));
        CHECK(std::get<PrintAndExit>(refused).status == 2);
    }
    // The old flag is gone, folded into --insecure-tcp; it must not pass silently.
    auto old = parse_command_line({"--insecure-no-token"});
    REQUIRE(std::holds_alternative<PrintAndExit>(old));
    CHECK(std::get<PrintAndExit>(old).status == 2);
    auto help = std::get<PrintAndExit>(parse_command_line({"--help"})).text;
    CHECK_THAT(help, Catch::Contains("--insecure-tcp") && Catch::Contains("--max-connections") &&
                         Catch::Contains("curl --unix-socket /run/wrenn/agent.sock") &&
                         Catch::Contains("group \"wrenn\"") && Catch::Contains("415"));
}

TEST_CASE("the flag --auth-timeout takes whole seconds", "[cli]") {
    for (const auto& [text, seconds] : {std::pair{"3s", 3}, std::pair{"45", 45}, {"2000ms", 2}}) {
        INFO(text);
        auto cmd = parse_command_line({"--auth-timeout", text});
        REQUIRE(std::holds_alternative<ServeOptions>(cmd));
        CHECK(std::get<ServeOptions>(cmd).auth_timeout == std::chrono::seconds(seconds));
    }
    for (const char* bad : {"0", "500ms", "1500ms", "3601s", "soon"}) {
        INFO(bad);
        auto refused = parse_command_line({"--auth-timeout", bad});
        REQUIRE(std::holds_alternative<PrintAndExit>(refused));
        CHECK(std::get<PrintAndExit>(refused).status == 2);
        CHECK_THAT(std::get<PrintAndExit>(refused).text, Catch::Contains("--auth-timeout"));
    }
}

TEST_CASE("flatten and tcmu take the rest of the arguments", "[cli]") {
    auto cmd = parse_command_line({"tcmu", "attach", "--id", "7"});
    REQUIRE(std::holds_alternative<Subcommand>(cmd));
    CHECK(std::get<Subcommand>(cmd).name == "tcmu");
    CHECK(std::get<Subcommand>(cmd).args == std::vector<std::string>{"attach", "--id", "7"});
}

TEST_CASE("JSON log lines escape what they carry", "[cli]") {
    CHECK(json_quote("a \"b\"\n\\") == R"("a \"b\"\n\\")");
    CHECK(json_quote(std::string("\x01", 1)) == R"("\u0001")");
}

TEST_CASE("the flag --max-import-bytes: no fixed cap by default, a byte count when given",
          "[cli]") {
    CHECK(std::get<ServeOptions>(parse_command_line({})).max_import_bytes == 0);
    auto cmd = parse_command_line({"--max-import-bytes", "1073741824"});
    REQUIRE(std::holds_alternative<ServeOptions>(cmd));
    CHECK(std::get<ServeOptions>(cmd).max_import_bytes == 1073741824);
    auto bad = parse_command_line({"--max-import-bytes", "lots"});
    REQUIRE(std::holds_alternative<PrintAndExit>(bad));
    CHECK(std::get<PrintAndExit>(bad).status == 2);
    CHECK_THAT(std::get<PrintAndExit>(parse_command_line({"--help"})).text,
               Catch::Contains("--max-import-bytes N"));
}
