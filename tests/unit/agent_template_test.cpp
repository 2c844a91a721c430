// Template identity: a sandbox is only ever resumed or flattened over the image it was made over.
// The templates are real files in the fixture's temp folder; the kernel is the fake.
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "agent/state/template_blocks.hpp"
#include "agent/state/template_image.hpp"
#include "agent_fixture.hpp"
#include "common/digest.hpp"
#include "common/file.hpp"

using namespace wrenn::agent;
using namespace wrenn::agent::testing;

namespace {

void write_bytes(const std::string& path, const std::string& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << bytes;
}

// A template with recognisable bytes: `fill` repeated over `size` bytes.
std::string content(char fill, std::size_t size = 1 << 20) {
    return std::string(size, fill);
}

bool exists(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0;
}

struct TemplateFixture : AgentFixture {
    std::string base = templates_dir() + "/base.img";
    TemplateFixture() {
        write_bytes(base, content('a'));
        restart();
    }
    // Replaces the image the way `cp new tmp && mv tmp base.img` does: a new inode.
    void replace_by_rename(const std::string& bytes) {
        write_bytes(base + ".new", bytes);
        std::filesystem::rename(base + ".new", base);
    }
};

}  // namespace

TEST_CASE("create records the template's identity at once; its digest follows in the background",
          "[agent][template]") {
    TemplateFixture f;
    f.platform.hold_digest_reads = true;  // the background read of base.img waits
    auto sb = f.create("sb1");            // ... and the create does not
    REQUIRE(sb.ok());
    REQUIRE(sb->origin.identity.has_value());
    struct stat st {};
    REQUIRE(::stat(f.base.c_str(), &st) == 0);
    CHECK(sb->origin.identity->inode == st.st_ino);
    CHECK(sb->origin.identity->size_bytes == (1u << 20));
    CHECK(sb->origin.identity->digest.empty());
    CHECK(api_view(sb.value()).at("template_digest").as_string() == "pending");
    auto listed =
        f.wait<std::vector<TemplateInfo>>([&](auto cb) { f.manager->list_templates(cb); });
    REQUIRE(listed.ok());
    REQUIRE(listed->size() == 1);
    CHECK(listed.value()[0].digest.empty());  // "pending" in the API, and no read waited for
    CHECK(listed.value()[0].problem.empty());

    f.platform.release_digest_reads();
    const std::string want = expected_blocks_digest(content('a'));
    CHECK(f.recorded_digest("sb1") == want);
    CHECK(api_view(*f.manager->get("sb1")).at("template_digest").as_string() == want);
    // The record on disk carries it too.
    f.manager->wait_idle();
    auto text = wrenn::read_file(f.store->record_path("sb1"), 1 << 20);
    REQUIRE(text.ok());
    CHECK(text->find(want) != std::string::npos);
}

TEST_CASE("the digest is computed once per version of the image, across restarts",
          "[agent][template]") {
    TemplateFixture f;
    REQUIRE(f.create("sb1").ok());
    REQUIRE(f.create("sb2").ok());
    CHECK(f.recorded_digest("sb1") == expected_blocks_digest(content('a')));
    CHECK(f.recorded_digest("sb2") == expected_blocks_digest(content('a')));
    CHECK(f.platform.templates_hashed == 1);
    f.restart();
    auto sb3 = f.create("sb3");
    REQUIRE(sb3.ok());
    CHECK(sb3->origin.identity->digest == expected_blocks_digest(content('a')));  // at once
    CHECK(f.platform.templates_hashed == 1);  // from <state-dir>/template-digests.json
    write_bytes(f.base, content('b'));
    REQUIRE(f.create("sb4").ok());
    CHECK(f.recorded_digest("sb4") == expected_blocks_digest(content('b')));
    CHECK(f.platform.templates_hashed == 2);
}

TEST_CASE("a digest pending at a stop is read again at the next start and recorded",
          "[agent][template]") {
    TemplateFixture f;
    f.platform.hold_digest_reads = true;
    REQUIRE(f.create("sb1").ok());
    REQUIRE(f.pause("sb1").ok());
    f.restart();  // the held read is abandoned with the old manager
    CHECK(f.recorded_digest("sb1") == expected_blocks_digest(content('a')));
}

TEST_CASE("resume refuses a template changed before its digest was known", "[agent][template]") {
    TemplateFixture f;
    f.platform.hold_digest_reads = true;
    REQUIRE(f.create("sb1").ok());
    REQUIRE(f.pause("sb1").ok());
    write_bytes(f.base, content('b'));  // the version sb1 was made over was never read
    f.platform.release_digest_reads();
    auto refused = f.resume("sb1");
    REQUIRE_FALSE(refused.ok());
    CHECK(refused.error().kind == FailureKind::TemplateChanged);
    CHECK(refused.error().error.message().find("before the agent had read") != std::string::npos);
    CHECK(exists(f.store->cow_path("sb1")));
}

TEST_CASE("resume refuses a template rewritten in place, and works once it is restored",
          "[agent][template]") {
    TemplateFixture f;
    REQUIRE(f.create("sb1").ok());
    REQUIRE_FALSE(f.recorded_digest("sb1").empty());
    REQUIRE(f.pause("sb1").ok());
    write_bytes(f.base, content('b'));  // same size, other bytes
    auto refused = f.resume("sb1");
    REQUIRE_FALSE(refused.ok());
    CHECK(refused.error().kind == FailureKind::TemplateChanged);
    CHECK(failure_http_status(refused.error().kind) == 409);
    CHECK(failure_code(refused.error().kind) == "template_changed");
    const std::string message = refused.error().error.message();
    CHECK(message.find("template 'base'") != std::string::npos);
    CHECK(message.find("put the original image back") != std::string::npos);
    CHECK(message.find(expected_blocks_digest(content('a'))) != std::string::npos);
    CHECK(exists(f.store->cow_path("sb1")));  // the CoW is kept
    CHECK(f.manager->get("sb1")->state == SandboxState::Paused);
    CHECK(f.platform.devices.empty());

    write_bytes(f.base, content('a'));  // restored: new mtime, same bytes
    auto resumed = f.resume("sb1");
    REQUIRE(resumed.ok());
    CHECK(resumed->state == SandboxState::Running);
    struct stat st {};
    REQUIRE(::stat(f.base.c_str(), &st) == 0);
    CHECK(resumed->origin.identity->mtime_ns ==
          static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec);
}

TEST_CASE("resume refuses a template replaced by rename or resized; the same bytes pass",
          "[agent][template]") {
    TemplateFixture f;
    REQUIRE(f.create("sb1").ok());
    REQUIRE_FALSE(f.recorded_digest("sb1").empty());
    REQUIRE(f.pause("sb1").ok());

    f.replace_by_rename(content('c'));
    auto renamed = f.resume("sb1");
    REQUIRE_FALSE(renamed.ok());
    CHECK(renamed.error().kind == FailureKind::TemplateChanged);
    CHECK(renamed.error().error.message().find("another file") != std::string::npos);

    f.replace_by_rename(content('a', 2 << 20));  // resized
    auto resized = f.resume("sb1");
    REQUIRE_FALSE(resized.ok());
    CHECK(resized.error().kind == FailureKind::TemplateChanged);
    CHECK(resized.error().error.message().find("size 1048576 -> 2097152") != std::string::npos);

    std::filesystem::remove(f.base);
    auto gone = f.resume("sb1");
    REQUIRE_FALSE(gone.ok());
    CHECK(gone.error().kind == FailureKind::TemplateChanged);
    CHECK(gone.error().error.message().find("is gone") != std::string::npos);

    f.replace_by_rename(content('a'));  // a copy of the original: another inode, same bytes
    auto resumed = f.resume("sb1");
    REQUIRE(resumed.ok());
    struct stat st {};
    REQUIRE(::stat(f.base.c_str(), &st) == 0);
    CHECK(resumed->origin.identity->inode == st.st_ino);
    // The new identity is what the record says now, so a restart agrees.
    f.restart();
    CHECK(f.manager->get("sb1")->origin.identity->inode == st.st_ino);
}

TEST_CASE("flatten refuses a changed template", "[agent][template]") {
    TemplateFixture f;
    REQUIRE(f.create("sb1").ok());
    REQUIRE_FALSE(f.recorded_digest("sb1").empty());
    REQUIRE(f.pause("sb1").ok());
    write_bytes(f.base, content('z'));
    auto out = f.flatten("sb1", "derived");
    REQUIRE_FALSE(out.ok());
    CHECK(out.error().kind == FailureKind::TemplateChanged);
    for (const auto& call : f.platform.calls) {
        CHECK(call.rfind("flatten", 0) != 0);
    }
}

TEST_CASE("create refuses a symlinked, other-writable or non-regular template",
          "[agent][template]") {
    TemplateFixture f;
    const std::string outside = f.tmp.path() + "/outside.img";
    write_bytes(outside, content('s'));
    REQUIRE(::symlink(outside.c_str(), (f.templates_dir() + "/link.img").c_str()) == 0);
    auto linked = f.create("sb1", "link");
    REQUIRE_FALSE(linked.ok());
    CHECK(linked.error().kind == FailureKind::InvalidRequest);
    CHECK(linked.error().error.message().find("symlink") != std::string::npos);

    write_bytes(f.templates_dir() + "/open.img", content('o'));
    REQUIRE(::chmod((f.templates_dir() + "/open.img").c_str(), 0646) == 0);
    auto writable = f.create("sb2", "open");
    REQUIRE_FALSE(writable.ok());
    CHECK(writable.error().kind == FailureKind::InvalidRequest);
    CHECK(writable.error().error.message().find("writable by other users") != std::string::npos);

    REQUIRE(::mkfifo((f.templates_dir() + "/fifo.img").c_str(), 0600) == 0);
    auto fifo = f.create("sb3", "fifo");  // must not hang on the open
    REQUIRE_FALSE(fifo.ok());
    CHECK(fifo.error().kind == FailureKind::InvalidRequest);
    CHECK(fifo.error().error.message().find("not a regular file") != std::string::npos);

    CHECK(f.platform.devices.empty());
    CHECK_FALSE(exists(f.store->sandbox_dir("sb1")));
}

TEST_CASE("open_template checks the owner", "[agent][template]") {
    TempDir tmp;
    const std::string path = tmp.path() + "/t.img";
    write_bytes(path, content('x', 4096));
    auto mine = open_template(path, ::geteuid());
    REQUIRE(mine.ok());
    auto foreign = open_template(path, ::geteuid() + 1);
    REQUIRE_FALSE(foreign.ok());
    CHECK(foreign.error().code() == EPERM);
    CHECK(foreign.error().message().find("owned by uid") != std::string::npos);
    auto whole = hash_whole(path, *mine);
    REQUIRE(whole.ok());
    CHECK(*whole == "sha256:" + wrenn::sha256_hex(content('x', 4096)));
    auto blocks = hash_blocks(path, *mine, -1);
    REQUIRE(blocks.ok());
    CHECK(blocks->digest() == expected_blocks_digest(content('x', 4096)));
}

TEST_CASE("GET /templates data: each template's digest, and why one is refused",
          "[agent][template]") {
    TemplateFixture f;
    REQUIRE(f.create("sb1").ok());
    REQUIRE_FALSE(f.recorded_digest("sb1").empty());
    write_bytes(f.templates_dir() + "/open.img", content('o'));
    REQUIRE(::chmod((f.templates_dir() + "/open.img").c_str(), 0646) == 0);
    auto list = f.wait<std::vector<TemplateInfo>>([&](auto cb) { f.manager->list_templates(cb); });
    REQUIRE(list.ok());
    REQUIRE(list->size() == 2);
    CHECK(list.value()[0].name == "base");
    CHECK(list.value()[0].digest == expected_blocks_digest(content('a')));
    CHECK(list.value()[1].name == "open");
    CHECK(list.value()[1].digest.empty());
    CHECK(list.value()[1].problem.find("writable by other users") != std::string::npos);
}

TEST_CASE("adoption at startup checks the template: a changed one is reported, not hidden",
          "[agent][template]") {
    TemplateFixture f;
    REQUIRE(f.create("sb1").ok());
    REQUIRE(f.create("sb2").ok());
    REQUIRE_FALSE(f.recorded_digest("sb2").empty());
    f.replace_by_rename(content('r'));  // while both run: their loops keep the old image
    auto report = f.restart();
    CHECK(report.adopted == 2);
    bool reported = false;
    for (const auto& problem : report.problems) {
        reported = reported || problem.find("template 'base'") != std::string::npos;
    }
    CHECK(reported);
    auto sb1 = f.manager->get("sb1");
    REQUIRE(sb1.has_value());
    CHECK(sb1->state == SandboxState::Running);  // its device is left running
    REQUIRE(sb1->last_error.has_value());
    CHECK(sb1->last_error->find("is not the image this sandbox was made over") !=
          std::string::npos);
    CHECK(f.platform.devices.count("sb1") == 1);

    // A pause still works; the resume then waits for the original image.
    REQUIRE(f.pause("sb1").ok());
    auto resumed = f.resume("sb1");
    REQUIRE_FALSE(resumed.ok());
    CHECK(resumed.error().kind == FailureKind::TemplateChanged);
    f.replace_by_rename(content('a'));
    CHECK(f.resume("sb1").ok());
}
