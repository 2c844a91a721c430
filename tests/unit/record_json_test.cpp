// record_from_json and record_to_json (agent/state/sandbox.hpp): sandbox.json as this agent
// writes it, read back unchanged, and as earlier agents wrote it, and every record refused.
#include <boost/json.hpp>
#include <catch2/catch.hpp>
#include <string>

#include "agent/state/sandbox.hpp"

using namespace wrenn::agent;
namespace json = boost::json;

namespace {

const std::string kHex(64, 'a');
constexpr std::uint64_t kGiB = std::uint64_t{1} << 30;

Sandbox read_ok(std::string_view text) {
    auto sandbox = record_from_json(json::parse(text));
    if (!sandbox) {
        FAIL("refused: " << sandbox.error().message());
    }
    return std::move(sandbox).value();
}

std::string refusal(std::string_view text) {
    auto sandbox = record_from_json(json::parse(text));
    REQUIRE_FALSE(sandbox.ok());
    CHECK(sandbox.error().code() == 0);
    return sandbox.error().message();
}

Sandbox running_loop_sandbox() {
    Sandbox s;
    s.id = "sb1";
    s.state = SandboxState::Running;
    s.template_name = "base";
    s.origin = OriginSpec{OriginSpec::Type::Loop,
                          "/var/lib/wrenn/templates/base.img",
                          {},
                          std::nullopt,
                          TemplateIdentity{2049, 131, 268435456, 1795786527123456789,
                                           1795786527123456790, "blocks-sha256-4k:" + kHex}};
    s.origin_device = "/dev/loop0";
    s.device = "/dev/mapper/wrenn-sb1";
    s.cow_path = "/var/lib/wrenn/sandboxes/sb1/rootfs.cow";
    s.cow_size_bytes = 270483456;
    s.origin_size_bytes = 268435456;
    s.cow_allocated_bytes = 4096;
    s.cow_status = "active";
    s.created_at = "2026-11-21T13:35:27.123Z";
    s.updated_at = "2026-11-21T13:35:28.456Z";
    s.last_error = "pause sb1: remove wrenn-sb1: device busy (open count 1)";
    s.forked_from = "sb0";
    return s;
}

// What a record keeps: everything but the live view of a running device's I/O.
void check_same_record(const Sandbox& a, const Sandbox& b) {
    CHECK(a.id == b.id);
    CHECK(a.state == b.state);
    CHECK(a.template_name == b.template_name);
    CHECK(a.origin == b.origin);
    CHECK(a.origin_device == b.origin_device);
    CHECK(a.device == b.device);
    CHECK(a.cow_path == b.cow_path);
    CHECK(a.cow_size_bytes == b.cow_size_bytes);
    CHECK(a.origin_size_bytes == b.origin_size_bytes);
    CHECK(a.cow_allocated_bytes == b.cow_allocated_bytes);
    CHECK(a.cow_status == b.cow_status);
    CHECK(a.created_at == b.created_at);
    CHECK(a.updated_at == b.updated_at);
    CHECK(a.last_error == b.last_error);
    CHECK(a.forked_from == b.forked_from);
}

}  // namespace

TEST_CASE("record_to_json writes every field, record_from_json reads them back", "[record]") {
    const Sandbox s = running_loop_sandbox();
    const json::object written = record_to_json(s);
    CHECK(written.at("version").as_int64() == 1);
    CHECK(written.at("origin").at("identity").at("digest").as_string() ==
          "blocks-sha256-4k:" + kHex);
    CHECK(written.at("cow").at("status").as_string() == "active");
    CHECK(written.at("forked_from").as_string() == "sb0");

    // Through the text sandbox.json holds.
    const Sandbox back = read_ok(json::serialize(written));
    check_same_record(back, s);
    CHECK(record_to_json(back) == written);

    SECTION("paused, pending digest, no error, not forked") {
        Sandbox p = s;
        p.state = SandboxState::Paused;
        p.origin_device.clear();
        p.device.clear();
        p.cow_status.clear();
        p.origin.identity->digest.clear();
        p.last_error.reset();
        p.forked_from.clear();
        const json::object out = record_to_json(p);
        CHECK(out.at("device").is_null());
        CHECK(out.at("origin").at("device").is_null());
        CHECK(out.at("origin").at("identity").at("digest").is_null());
        CHECK(out.at("cow").at("status").is_null());
        CHECK(out.at("last_error").is_null());
        CHECK(out.at("forked_from").is_null());
        const Sandbox again = read_ok(json::serialize(out));
        check_same_record(again, p);
        CHECK(record_to_json(again) == out);
    }
    SECTION("a TCMU origin, with and without a size") {
        Sandbox t = s;
        t.template_name.clear();
        t.origin = OriginSpec{OriginSpec::Type::Tcmu, "/etc/overlaybd/sb1.json", "overlaybd", kGiB,
                              std::nullopt};
        t.origin_device = "/dev/sda";
        const json::object out = record_to_json(t);
        CHECK(out.at("template").is_null());
        CHECK(out.at("origin").at("config").as_string() == "/etc/overlaybd/sb1.json");
        CHECK(out.at("origin").at("size_bytes").to_number<std::uint64_t>() == kGiB);
        CHECK_FALSE(out.at("origin").as_object().contains("identity"));
        check_same_record(read_ok(json::serialize(out)), t);

        t.origin.size_bytes.reset();
        const json::object unsized = record_to_json(t);
        CHECK_FALSE(unsized.at("origin").as_object().contains("size_bytes"));
        check_same_record(read_ok(json::serialize(unsized)), t);
    }
    SECTION("the live I/O view is not part of the record") {
        Sandbox live = s;
        live.io_suspended_for_space = true;
        live.io_suspended_by = {"fork", "space"};
        live.io_error = "resume wrenn-sb1: device busy";
        CHECK(record_to_json(live) == written);
    }
}

TEST_CASE("record_from_json reads the records of earlier agents", "[record]") {
    SECTION("the first agent's: no cow.status, no template identity, no forked_from") {
        const Sandbox s = read_ok(R"({"version": 1, "id": "sb1", "state": "running",
            "template": "base",
            "origin": {"type": "loop", "image": "/t/base.img", "device": "/dev/loop0"},
            "device": "/dev/mapper/wrenn-sb1",
            "cow": {"path": "/s/sb1/rootfs.cow", "size_bytes": 270483456, "allocated_bytes": 4096},
            "origin_size_bytes": 268435456, "created_at": "2026-01-01T00:00:00.000Z",
            "updated_at": "2026-01-01T00:00:01.000Z", "last_error": null})");
        CHECK(s.id == "sb1");
        CHECK(s.state == SandboxState::Running);
        CHECK(s.template_name == "base");
        CHECK(s.origin.type == OriginSpec::Type::Loop);
        CHECK(s.origin.path == "/t/base.img");
        CHECK_FALSE(s.origin.identity);  // resume and flatten take the image as it is now
        CHECK(s.origin_device == "/dev/loop0");
        CHECK(s.device == "/dev/mapper/wrenn-sb1");
        CHECK(s.cow_size_bytes == 270483456);
        CHECK(s.cow_allocated_bytes == 4096);
        CHECK(s.cow_status.empty());
        CHECK(s.origin_size_bytes == 268435456);
        CHECK_FALSE(s.last_error);
        CHECK(s.forked_from.empty());
        // Written again in today's form, with the fields it lacked as null.
        const json::object out = record_to_json(s);
        CHECK(out.at("cow").at("status").is_null());
        CHECK(out.at("forked_from").is_null());
    }
    SECTION("a paused TCMU origin of the first agent") {
        const Sandbox s = read_ok(R"({"version": 1, "id": "t1", "state": "paused",
            "template": null,
            "origin": {"type": "tcmu", "config": "/etc/ob/t1.json", "handler": "overlaybd",
                       "size_bytes": 1073741824, "device": null},
            "device": null, "cow": {"path": "/s/t1/rootfs.cow", "size_bytes": 1082130432,
            "allocated_bytes": 0}, "origin_size_bytes": 1073741824,
            "created_at": "2026-01-01T00:00:00.000Z", "updated_at": "2026-01-01T00:00:00.000Z",
            "last_error": "resume t1: attach: timed out"})");
        CHECK(s.state == SandboxState::Paused);
        CHECK(s.template_name.empty());
        CHECK(s.origin.type == OriginSpec::Type::Tcmu);
        CHECK(s.origin.handler == "overlaybd");
        CHECK(s.origin.size_bytes == 1073741824u);
        CHECK(s.origin_device.empty());
        CHECK(s.device.empty());
        CHECK(s.last_error == "resume t1: attach: timed out");
    }
    SECTION(
        "identities of agents before digests named their algorithm: the whole image's SHA-256") {
        const Sandbox s = read_ok(R"({"id": "sb1", "state": "paused",
            "origin": {"type": "loop", "image": "/t/base.img", "device": null,
                       "identity": {"device": 2049, "inode": 131, "size_bytes": 4096,
                                    "mtime_ns": 1, "ctime_ns": 2, "sha256": ")" +
                                  kHex + R"("}},
            "cow": {"path": "/s/sb1/rootfs.cow", "size_bytes": 8192, "allocated_bytes": 0,
                    "status": null}})");
        REQUIRE(s.origin.identity);
        CHECK(*s.origin.identity == TemplateIdentity{2049, 131, 4096, 1, 2, "sha256:" + kHex});
        // Written back under "digest", with its algorithm.
        CHECK(record_to_json(s).at("origin").at("identity").at("digest").as_string() ==
              "sha256:" + kHex);
        CHECK_FALSE(record_to_json(s).at("origin").at("identity").as_object().contains("sha256"));
    }
    SECTION("a digest still pending, and one already named") {
        const std::string pending = R"({"id": "sb1", "state": "running",
            "origin": {"type": "loop", "image": "/t/base.img",
                       "identity": {"device": 1, "inode": 2, "size_bytes": 3, "mtime_ns": -4,
                                    "ctime_ns": 5, "digest": null}},
            "cow": {"path": "/c", "size_bytes": 8192}})";
        const Sandbox p = read_ok(pending);
        REQUIRE(p.origin.identity);
        CHECK(p.origin.identity->digest.empty());
        CHECK(p.origin.identity->mtime_ns == -4);
        // Only what identifies the sandbox and its CoW is required.
        CHECK(p.template_name.empty());
        CHECK(p.device.empty());
        CHECK(p.cow_allocated_bytes == 0);
        CHECK(p.origin_size_bytes == 0);
        CHECK(p.created_at.empty());

        const Sandbox named = read_ok(R"({"id": "sb1", "state": "running",
            "origin": {"type": "loop", "image": "/t/base.img",
                       "identity": {"device": 1, "inode": 2, "size_bytes": 3, "mtime_ns": 4,
                                    "ctime_ns": 5, "digest": "sha256:)" +
                                      kHex + R"(", "sha256": "ignored"}},
            "cow": {"path": "/c", "size_bytes": 8192}})");
        CHECK(named.origin.identity->digest == "sha256:" + kHex);
    }
}

TEST_CASE("record_from_json refuses a record it cannot trust, saying why", "[record]") {
    const std::string cow = R"("cow": {"path": "/c", "size_bytes": 8192})";
    const std::string loop = R"("origin": {"type": "loop", "image": "/t/base.img"})";
    auto record = [&](std::string_view fields) { return "{" + std::string(fields) + "}"; };

    CHECK(refusal("[]") == "read sandbox record: not a JSON object");
    CHECK(refusal(record(R"("state": "running", )" + loop + ", " + cow)) ==
          "read sandbox record: field 'id' is missing or not a string");
    CHECK(refusal(record(R"("id": 7, "state": "running", )" + loop + ", " + cow)) ==
          "read sandbox record: field 'id' is missing or not a string");
    CHECK(refusal(record(R"("id": "sb1", )" + loop + ", " + cow)) ==
          "read sandbox record: field 'state' is missing or not a string");
    CHECK(refusal(record(R"("id": "sb1", "state": "frozen", )" + loop + ", " + cow)) ==
          "read sandbox record: unknown state 'frozen'");
    CHECK(refusal(record(R"("id": "sb1", "state": "paused", )" + cow)) ==
          "read sandbox record: field 'origin' is missing");
    CHECK(refusal(record(R"("id": "sb1", "state": "paused", "origin": {}, )" + cow)) ==
          "read sandbox record: field 'type' is missing or not a string");
    CHECK(refusal(record(R"("id": "sb1", "state": "paused", "origin": {"type": "nbd"}, )" + cow)) ==
          "read sandbox record: unknown origin type 'nbd'");
    CHECK(refusal(record(R"("id": "sb1", "state": "paused", "origin": {"type": "loop"}, )" +
                         cow)) == "read sandbox record: field 'image' is missing or not a string");
    CHECK(refusal(record(R"("id": "sb1", "state": "paused",
        "origin": {"type": "tcmu", "config": "/c.json"}, )" +
                         cow)) == "read sandbox record: tcmu origin needs 'config' and 'handler'");
    CHECK(refusal(record(R"("id": "sb1", "state": "paused",
        "origin": {"type": "tcmu", "config": "/c.json", "handler": "ob", "size_bytes": -1}, )" +
                         cow)) ==
          "read sandbox record: field 'size_bytes' is not a non-negative integer");
    CHECK(refusal(record(R"("id": "sb1", "state": "paused", )" + loop)) ==
          "read sandbox record: field 'cow' is missing");
    CHECK(refusal(record(R"("id": "sb1", "state": "paused", )" + loop +
                         R"(, "cow": {"path": "/c"})")) ==
          "read sandbox record: field 'cow' needs 'path' and 'size_bytes'");

    const auto with_identity = [&](std::string_view identity) {
        return record(R"("id": "sb1", "state": "paused", "origin": {"type": "loop",
            "image": "/t/base.img", "identity": {)" +
                      std::string(identity) + "}}, " + cow);
    };
    CHECK(refusal(with_identity(R"("device": 1, "inode": 2, "size_bytes": 3, "mtime_ns": 4)")) ==
          "read sandbox record: origin.identity needs device, inode, size_bytes, mtime_ns, "
          "ctime_ns");
    CHECK(refusal(with_identity(
              R"("device": -1, "inode": 2, "size_bytes": 3, "mtime_ns": 4, "ctime_ns": 5)")) ==
          "read sandbox record: origin.identity needs device, inode, size_bytes, mtime_ns, "
          "ctime_ns");
    const std::string times = R"("device": 1, "inode": 2, "size_bytes": 3, "mtime_ns": 4,
        "ctime_ns": 5, )";
    CHECK(refusal(with_identity(times + R"("digest": 7)")) ==
          "read sandbox record: origin.identity.digest must be a string or null");
    CHECK(refusal(with_identity(times + R"("digest": "md5:abc")")) ==
          "read sandbox record: origin.identity has a digest this agent does not know: md5:abc");
    // Uppercase hex is not how any agent wrote a digest.
    CHECK_THAT(refusal(with_identity(times + R"("sha256": ")" + std::string(64, 'A') + "\"")),
               Catch::StartsWith("read sandbox record: origin.identity has a digest this agent "
                                 "does not know: AAAA"));
}
