#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "tcmu/naming.hpp"

namespace tcmu = wrenn::tcmu;

TEST_CASE("tcmu ids are 1 to 13 decimal digits", "[tcmu]") {
    CHECK(tcmu::is_valid_id("1"));
    CHECK(tcmu::is_valid_id("123456"));
    CHECK(tcmu::is_valid_id("1234567890123"));
    CHECK_FALSE(tcmu::is_valid_id(""));
    CHECK_FALSE(tcmu::is_valid_id("12345678901234"));
    CHECK_FALSE(tcmu::is_valid_id("12a"));
    CHECK_FALSE(tcmu::is_valid_id("-1"));
    CHECK_FALSE(tcmu::is_valid_id("1 "));
    CHECK_FALSE(tcmu::is_valid_id("../1"));
}

TEST_CASE("the loopback WWN is naa.199 and the id padded to 13 digits", "[tcmu]") {
    CHECK(tcmu::wwn_for_id("123456") == "naa.1990000000123456");
    CHECK(tcmu::wwn_for_id("42") == "naa.1990000000000042");
    CHECK(tcmu::wwn_for_id("1234567890123") == "naa.1991234567890123");
    CHECK(tcmu::wwn_for_id("1").size() == 4 + 16);
}

TEST_CASE("configfs paths of a tcmu device", "[tcmu]") {
    CHECK(tcmu::kDefaultHba == 999999999);
    CHECK(tcmu::hba_dir() == "target/core/user_999999999");
    CHECK(tcmu::core_device_dir("123") == "target/core/user_999999999/dev_123");
    CHECK(tcmu::loopback_target_dir("123") == "target/loopback/naa.1990000000000123");
    CHECK(tcmu::dev_config_for("overlaybd", "/a/config.v1.json") == "overlaybd//a/config.v1.json");
}

TEST_CASE("the id for a config path is stable, valid and never 0", "[tcmu]") {
    std::string a = tcmu::id_for_config("/var/lib/overlaybd/a/config.v1.json");
    CHECK(a == tcmu::id_for_config("/var/lib/overlaybd/a/config.v1.json"));
    CHECK(a != tcmu::id_for_config("/var/lib/overlaybd/b/config.v1.json"));
    CHECK(tcmu::is_valid_id(a));
    CHECK(a.size() <= 12);
    CHECK(tcmu::is_valid_id(tcmu::id_for_config("")));
    CHECK(tcmu::id_for_config("") != "0");
    // FNV-1a 64 of "" is its offset basis, 14695981039346656037; mod 10^12 = 981039346656037 %
    // 10^12.
    CHECK(tcmu::id_for_config("") == "39346656037");
}

TEST_CASE("the config path comes back from dev_config", "[tcmu]") {
    CHECK(*tcmu::config_from_dev_config("overlaybd//a/b/config.v1.json\n") ==
          "/a/b/config.v1.json");
    CHECK(*tcmu::config_from_dev_config("qcow//scratch/img.qcow2") == "/scratch/img.qcow2");
    CHECK_FALSE(tcmu::config_from_dev_config("\n").ok());
    CHECK_FALSE(tcmu::config_from_dev_config("overlaybd").ok());
    CHECK(tcmu::config_from_dev_config("overlaybd/").error().code() == EINVAL);
}

TEST_CASE("a SCSI address is H:C:T", "[tcmu]") {
    CHECK(*tcmu::parse_scsi_address("0:0:1\n") == "0:0:1");
    CHECK(*tcmu::parse_scsi_address("12:0:345") == "12:0:345");
    CHECK_FALSE(tcmu::parse_scsi_address("").ok());
    CHECK_FALSE(tcmu::parse_scsi_address("\n").ok());
    CHECK_FALSE(tcmu::parse_scsi_address("0:0").ok());
    CHECK_FALSE(tcmu::parse_scsi_address("0::1").ok());
    CHECK_FALSE(tcmu::parse_scsi_address("0:0:1:0").ok());
    CHECK_FALSE(tcmu::parse_scsi_address("a:0:1").ok());
}

namespace {

// A temporary folder, removed with everything in it.
struct TempDir {
    std::filesystem::path path;
    TempDir() {
        std::string tmpl = (std::filesystem::temp_directory_path() / "wrenn-tcmu-XXXXXX").string();
        REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
        path = tmpl;
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
    std::string write(const std::string& name, const std::string& text) const {
        std::ofstream(path / name) << text;
        return (path / name).string();
    }
};

}  // namespace

TEST_CASE("resultFile of an overlaybd config: absolute, relative or absent", "[tcmu]") {
    TempDir dir;
    auto absolute = dir.write("abs.json", R"({"repoBlobUrl": "x", "resultFile": "/run/x/result"})");
    CHECK(*tcmu::result_file_for_config(absolute) == "/run/x/result");

    auto relative = dir.write("rel.json", R"({"resultFile": "sub/result.txt", "lowers": []})");
    CHECK(*tcmu::result_file_for_config(relative) == (dir.path / "sub/result.txt").string());

    auto absent = dir.write("none.json", R"({"lowers": [], "upper": {}})");
    CHECK(*tcmu::result_file_for_config(absent) == (dir.path / "init-debug.log").string());

    auto empty = dir.write("empty.json", R"({"resultFile": ""})");
    CHECK(*tcmu::result_file_for_config(empty) == (dir.path / "init-debug.log").string());

    auto bad = dir.write("bad.json", "not json");
    CHECK(tcmu::result_file_for_config(bad).error().code() == EINVAL);
    auto number = dir.write("number.json", R"({"resultFile": 3})");
    CHECK(tcmu::result_file_for_config(number).error().code() == EINVAL);

    auto missing = tcmu::result_file_for_config((dir.path / "missing.json").string());
    REQUIRE_FALSE(missing.ok());
    CHECK(missing.error().code() == ENOENT);
    CHECK_THAT(missing.error().message(), Catch::Contains("missing.json"));
}
