// The versions of the state dir's files: every earlier one is read, a newer one stops the agent
// before it changes anything (agent/state/formats.hpp).
#include <boost/json/parse.hpp>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "agent/cli/cli.hpp"
#include "agent/daemon/serve.hpp"
#include "agent/state/formats.hpp"
#include "agent/state/state_store.hpp"
#include "agent_fixture.hpp"
#include "fake_platform.hpp"

using namespace wrenn;
using namespace wrenn::agent;
using namespace wrenn::agent::testing;
namespace fs = std::filesystem;

namespace {

void write_text(const std::string& path, const std::string& text) {
    fs::create_directories(fs::path(path).parent_path());
    std::ofstream(path) << text;
}

// Every file beneath `dir` and its bytes, but the lock the claim of the state dir takes.
std::map<std::string, std::string> tree(const std::string& dir) {
    std::map<std::string, std::string> out;
    for (const auto& e : fs::recursive_directory_iterator(dir)) {
        const std::string rel = fs::relative(e.path(), dir).string();
        if (rel == "agent.lock") {
            continue;
        }
        std::ifstream in(e.path(), std::ios::binary);
        out[rel + (e.is_directory() ? "/" : "")] =
            e.is_directory() ? "" : std::string((std::istreambuf_iterator<char>(in)), {});
    }
    return out;
}

const std::string kRecordV1 = R"({"version": 1, "id": "sb1", "state": "paused",
    "template": "base", "origin": {"type": "loop", "image": "/t/base.img", "device": null},
    "device": null, "cow": {"path": "/s/sb1/rootfs.cow", "size_bytes": 270483456,
    "allocated_bytes": 4096}, "origin_size_bytes": 268435456,
    "created_at": "2026-01-01T00:00:00.000Z", "updated_at": "2026-01-01T00:00:01.000Z",
    "last_error": null})";
// The digest index of the first agents (no "version"; a bare whole-image sha256) and of today's.
const std::string kIndexV1 = R"({"templates": [{"path": "/t/base.img", "device": 2049,
    "inode": 131, "size_bytes": 4096, "mtime_ns": 1, "ctime_ns": 2,
    "sha256": ")" + std::string(64, 'c') +
                             R"("}]})";
const std::string kIndexV2 = R"({"version": 2, "templates": [{"path": "/t/base.img",
    "device": 2049, "inode": 131, "size_bytes": 4096, "mtime_ns": 1, "ctime_ns": 2,
    "digest": "blocks-sha256-4k:)" +
                             std::string(64, 'a') + R"("}]})";

}  // namespace

TEST_CASE("format_version: a file without one is version 1; junk is 0", "[formats]") {
    CHECK(format_version(boost::json::parse(R"({"id": "x"})")) == 1);
    CHECK(format_version(boost::json::parse(R"({"version": 2})")) == 2);
    CHECK(format_version(boost::json::parse(R"({"version": "2"})")) == 0);
    CHECK(format_version(boost::json::parse(R"({"version": -1})")) == 0);
    CHECK(format_version(boost::json::parse(R"({"version": 1.5})")) == 0);
    CHECK(format_version(boost::json::parse(R"([1])")) == 1);
}

TEST_CASE("a state dir of every earlier format passes the check", "[formats]") {
    TempDir tmp;
    write_text(tmp.path() + "/sandboxes/sb1/sandbox.json", kRecordV1);
    for (const auto& index : {kIndexV1, kIndexV2}) {
        write_text(tmp.path() + "/template-digests.json", index);
        CHECK(check_state_formats(tmp.path()).ok());
    }
    // Unreadable and half-made sandboxes are recovery's to report, not a format's.
    write_text(tmp.path() + "/sandboxes/junk/sandbox.json", "{not json");
    fs::create_directories(tmp.path() + "/sandboxes/unfinished");
    CHECK(check_state_formats(tmp.path()).ok());
    // An empty or new state dir.
    TempDir empty;
    CHECK(check_state_formats(empty.path()).ok());
    CHECK(check_state_formats(empty.path() + "/not-there").ok());
}

TEST_CASE("a newer format in the state dir is refused, naming the file and both versions",
          "[formats]") {
    TempDir tmp;
    write_text(tmp.path() + "/sandboxes/sb1/sandbox.json", kRecordV1);
    write_text(tmp.path() + "/template-digests.json", kIndexV2);
    SECTION("a record") {
        std::string newer = kRecordV1;
        newer.replace(newer.find("\"version\": 1"), 12, "\"version\": 2");
        write_text(tmp.path() + "/sandboxes/sb2/sandbox.json", newer);
        auto checked = check_state_formats(tmp.path());
        REQUIRE_FALSE(checked.ok());
        CHECK(checked.error().code() == ENOTSUP);
        CHECK_THAT(checked.error().message(),
                   Catch::Contains("sandboxes/sb2/sandbox.json") &&
                       Catch::Contains("format version 2, newer than the 1 this agent reads") &&
                       Catch::Contains("nothing was changed"));
        // And the record alone, read by the store.
        auto sandbox = record_from_json(boost::json::parse(newer));
        REQUIRE_FALSE(sandbox.ok());
        CHECK_THAT(sandbox.error().message(), Catch::Contains("format version 2"));
    }
    SECTION("the digest index") {
        write_text(tmp.path() + "/template-digests.json", R"({"version": 3, "templates": []})");
        auto checked = check_state_formats(tmp.path());
        REQUIRE_FALSE(checked.ok());
        CHECK_THAT(checked.error().message(),
                   Catch::Contains("template-digests.json") &&
                       Catch::Contains("format version 3, newer than the 2 this agent reads"));
    }
}

TEST_CASE("serve over a newer agent's state dir exits 78 and changes nothing", "[formats]") {
    TempDir tmp;
    const std::string state = tmp.path() + "/state";
    std::string newer = kRecordV1;
    newer.replace(newer.find("\"version\": 1"), 12, "\"version\": 2");
    write_text(state + "/sandboxes/sb1/sandbox.json", newer);
    write_text(state + "/sandboxes/sb1/rootfs.cow", "cow bytes");
    write_text(state + "/sandboxes/sb2/export.cow.tmp-abcdef", "a copy recovery would remove");
    write_text(state + "/template-digests.json", kIndexV2);
    const auto before = tree(state);
    ServeOptions options;
    options.state_dir = state;
    options.templates_dir = tmp.path() + "/templates";
    options.listen = std::vector<std::string>{"unix:" + tmp.path() + "/agent.sock"};
    FakePlatform platform;
    CHECK(serve_with(options, platform) == kExitNewerFormat);
    CHECK(tree(state) == before);
    CHECK_FALSE(fs::exists(tmp.path() + "/agent.sock"));
}
