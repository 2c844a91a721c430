// docs/wrenn-agent.8 is written by hand; this keeps it in step with --help: the same options,
// and the version the binary reports.
#include <catch2/catch.hpp>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "agent/cli/cli.hpp"
#include "agent/cli/version.hpp"

using namespace wrenn::agent;

namespace {

std::string man_page() {
    std::ifstream in(std::string(WRENN_SOURCE_DIR) + "/docs/wrenn-agent.8");
    REQUIRE(in);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

// The options --help lists: each line of its "Options:" part that starts with one.
std::set<std::string> help_options() {
    const auto help = std::get<PrintAndExit>(parse_command_line({"--help"})).text;
    const auto start = help.find("\nOptions:\n");
    REQUIRE(start != std::string::npos);
    std::set<std::string> out;
    std::istringstream lines(help.substr(start));
    const std::regex option(R"(^  (?:-h \[ )?(--[a-z][a-z-]*))");
    for (std::string line; std::getline(lines, line);) {
        if (std::smatch m; std::regex_search(line, m, option)) {
            out.insert(m[1]);
        }
    }
    return out;
}

// The options the man page's OPTIONS section describes: the first line after each .TP.
std::set<std::string> man_options(const std::string& page) {
    const auto start = page.find("\n.SH OPTIONS\n");
    REQUIRE(start != std::string::npos);
    const auto end = page.find("\n.SH ", start + 1);
    std::istringstream lines(page.substr(start, end - start));
    std::set<std::string> out;
    const std::regex option(R"(\\-\\-([a-z](?:[a-z]|\\-)*))");
    bool after_tp = false;
    for (std::string line; std::getline(lines, line);) {
        if (after_tp) {
            for (std::sregex_iterator it(line.begin(), line.end(), option), e; it != e; ++it) {
                out.insert("--" + std::regex_replace((*it)[1].str(), std::regex(R"(\\-)"), "-"));
            }
        }
        after_tp = line == ".TP";
    }
    return out;
}

}  // namespace

TEST_CASE("the man page describes every option --help lists, and no other", "[cli][man]") {
    const auto help = help_options();
    const auto man = man_options(man_page());
    REQUIRE(help.size() > 20);
    for (const auto& o : help) {
        INFO(o);
        CHECK(man.count(o) == 1);
    }
    for (const auto& o : man) {
        INFO(o);
        CHECK(help.count(o) == 1);
    }
}

TEST_CASE("the man page carries the binary's version", "[cli][man]") {
    CHECK_THAT(man_page(), Catch::Contains("\"wrenn-agent " + std::string(version()) + "\""));
}
