#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>

#include "tcmu/configfs/naming.hpp"

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

TEST_CASE("the id of an origin is stable, valid, never 0 and follows the whole spec", "[tcmu]") {
    const std::string cfg = "/var/lib/overlaybd/a/config.v1.json";
    const std::string a = tcmu::id_for_origin("overlaybd", cfg, std::nullopt);
    CHECK(a == tcmu::id_for_origin("overlaybd", cfg, std::nullopt));
    CHECK(tcmu::is_valid_id(a));
    CHECK(a.size() <= 12);
    CHECK(a != "0");
    // Every field counts: another config, handler or size is another device.
    CHECK(a !=
          tcmu::id_for_origin("overlaybd", "/var/lib/overlaybd/b/config.v1.json", std::nullopt));
    CHECK(a != tcmu::id_for_origin("qcow", cfg, std::nullopt));
    CHECK(a != tcmu::id_for_origin("overlaybd", cfg, 4096));
    CHECK(tcmu::id_for_origin("overlaybd", cfg, 4096) !=
          tcmu::id_for_origin("overlaybd", cfg, 8192));
    // Fields cannot bleed into each other: length prefixes keep "a"+"b/c" apart from "a/b"+"c".
    CHECK(tcmu::origin_spec_bytes("a", "b/c", std::nullopt) !=
          tcmu::origin_spec_bytes("a/b", "c", std::nullopt));
    CHECK(tcmu::origin_spec_bytes("qcow", "/x", 7) ==
          "wrenn tcmu origin v1\nhandler=4:qcow\nconfig=2:/x\nsize=1:7\n");
    CHECK(tcmu::origin_spec_bytes("qcow", "/x", std::nullopt) ==
          "wrenn tcmu origin v1\nhandler=4:qcow\nconfig=2:/x\nsize=0:\n");
    // Pinned: the first 8 bytes of SHA-256 of these bytes, big-endian, mod 10^12. A change here
    // changes every id, and an agent upgraded across it would no longer find its devices.
    CHECK(tcmu::id_for_origin("qcow", "/x", 7) == "794899155201");
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

TEST_CASE("resultFile field from a config's text", "[tcmu]") {
    CHECK(*tcmu::result_file_field(R"({"resultFile": "r.log"})") ==
          std::optional<std::string>("r.log"));
    CHECK(*tcmu::result_file_field(R"({"resultFile": ""})") == std::nullopt);
    CHECK(*tcmu::result_file_field(R"({"lowers": []})") == std::nullopt);
    CHECK(tcmu::result_file_field("[]").error().code() == EINVAL);
    CHECK(tcmu::result_file_field("{").error().code() == EINVAL);
    CHECK(tcmu::result_file_field(R"({"resultFile": null})").error().code() == EINVAL);
}

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

TEST_CASE("the pre-SHA-256 id of a config is still found, for devices attached before it",
          "[tcmu]") {
    // FNV-1a 64 mod 10^12, as agents before SHA-256 ids derived it: the offset basis
    // 14695981039346656037 for "" gives 39346656037; a path gives what those agents used.
    CHECK(tcmu::legacy_id_for_config("") == "39346656037");
    CHECK(tcmu::legacy_id_for_config("/etc/overlaybd/sb1/config.v1.json") == "49401168084");
    CHECK(tcmu::legacy_id_for_config("/x") == "598283480754");
    CHECK(tcmu::legacy_id_for_config("/x") != tcmu::id_for_origin("overlaybd", "/x", std::nullopt));
}

TEST_CASE("an agent's device serial names its state dir's tag and the id", "[tcmu]") {
    CHECK(tcmu::owner_serial("0123456789abcdef", "42") == "WRENN-TCMU-0123456789abcdef-42");
    CHECK(tcmu::is_valid_serial(tcmu::owner_serial("0123456789abcdef", "9999999999999")));
    CHECK(tcmu::is_valid_serial(std::string(253, 'a')));
    CHECK_FALSE(tcmu::is_valid_serial(std::string(254, 'a')));  // INQUIRY_VPD_SERIAL_LEN 254
    CHECK_FALSE(tcmu::is_valid_serial(""));
    CHECK_FALSE(tcmu::is_valid_serial("a b"));
    CHECK_FALSE(tcmu::is_valid_serial("a,b"));
    CHECK_FALSE(tcmu::is_valid_serial("a\n"));
}

TEST_CASE("wwn/vpd_unit_serial reads back as its value", "[tcmu]") {
    // target_wwn_vpd_unit_serial_show, as seen in the VM (6.1).
    CHECK(tcmu::parse_unit_serial("T10 VPD Unit Serial Number: WRENN-TCMU-ab-1\n") ==
          "WRENN-TCMU-ab-1");
    CHECK(tcmu::parse_unit_serial("T10 VPD Unit Serial Number: \n").empty());
    CHECK(tcmu::parse_unit_serial("") == "");
    CHECK(tcmu::parse_unit_serial("bare\n") == "bare");
}

TEST_CASE("each handler's backstore is named for the message that says to start it", "[tcmu]") {
    CHECK(tcmu::backstore_for_handler("overlaybd") == "overlaybd-tcmu");
    CHECK(tcmu::backstore_for_handler("qcow") == "tcmu-runner");
    CHECK(tcmu::backstore_for_handler("rbd") == "tcmu-runner");
}
