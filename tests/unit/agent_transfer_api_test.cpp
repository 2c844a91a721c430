// GET /sandboxes/{id}/export and POST /sandboxes/import through the Api over the fake
// platform: the archive's bytes, the round trip, and every refusal leaving nothing behind.
#include <boost/json.hpp>
#include <catch2/catch.hpp>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include "agent_fixture.hpp"
#include "archive/format.hpp"
#include "archive/reader.hpp"
#include "flatten/exception_store.hpp"
#include "flatten_cow_writer.hpp"
#include "http/core/body_pipe.hpp"

using namespace wrenn::agent;
using namespace wrenn::agent::testing;
namespace http = boost::beast::http;
namespace json = boost::json;
namespace ft = wrenn::flatten::testing;
using Bytes = std::vector<std::byte>;

namespace {

// Origin chunk -> its bytes in the sandbox, read through the CoW's exception store.
std::map<std::uint64_t, Bytes> sandbox_chunks(const std::string& cow, std::uint64_t origin) {
    auto store = wrenn::flatten::read_exception_store_file(cow, origin);
    REQUIRE(store.ok());
    std::ifstream in(cow, std::ios::binary);
    std::map<std::uint64_t, Bytes> out;
    for (const auto& e : store->exceptions) {
        Bytes chunk(4096);
        in.seekg(static_cast<std::streamoff>(e.new_chunk * 4096));
        in.read(reinterpret_cast<char*>(chunk.data()), 4096);
        out[e.old_chunk] = std::move(chunk);
    }
    return out;
}

struct TransferFixture : AgentFixture {
    Api api{*manager, platform, metrics};
    std::vector<std::uint64_t> changed{0, 3, 100, 255};

    // The sandbox's CoW replaced by a store with `changed` chunks (as the kernel leaves it).
    void write_changes(const std::string& id) {
        auto image = ft::make_cow(ft::allocate_like_kernel(changed), 256);
        for (std::size_t i = 0; i < changed.size(); ++i) {
            ft::fill_chunk(image, 2 + i, static_cast<std::uint8_t>(changed[i] + 1));
        }
        const std::string cow = store->cow_path(id);
        const auto size = std::filesystem::file_size(cow);
        std::ofstream(cow, std::ios::binary | std::ios::trunc)
            .write(reinterpret_cast<const char*>(image.data()),
                   static_cast<std::streamsize>(image.size()));
        std::filesystem::resize_file(cow, size);
    }

    wrenn::http::Reply call(http::verb verb, std::string target) {
        HttpRequest req{verb, target, 11};
        auto promise = std::make_shared<std::promise<wrenn::http::Reply>>();
        auto future = promise->get_future();
        api.handle(std::move(req),
                   [promise](wrenn::http::Reply reply) { promise->set_value(std::move(reply)); });
        return future.get();
    }

    // The export's status and, for a 200, every byte of the stream; ok false when the stream
    // ended broken.
    struct Exported {
        unsigned status = 0;
        std::string content_type;
        Bytes bytes;
        bool complete = false;
        std::string error_code;
    };
    Exported export_of(const std::string& id, std::string query = "") {
        auto reply = call(http::verb::get, "/sandboxes/" + id + "/export" + query);
        Exported out;
        if (!reply.streamed()) {
            out.status = reply.response().result_int();
            out.error_code = std::string(
                json::parse(reply.response().body()).at("error").at("code").as_string());
            return out;
        }
        auto& stream = reply.stream();
        out.status = stream.header.result_int();
        out.content_type = std::string(stream.header[http::field::content_type]);
        std::array<std::byte, 8192> buffer{};
        for (;;) {
            auto n = stream.body.read(buffer);
            if (!n) {
                return out;
            }
            if (*n == 0) {
                out.complete = true;
                return out;
            }
            out.bytes.insert(out.bytes.end(), buffer.begin(), buffer.begin() + *n);
        }
    }

    // POST /sandboxes/import?id=... with `bytes` as the body, written by another thread;
    // `finish` false: the upload breaks after the bytes (a client gone).
    HttpResponse import(const std::string& query, const Bytes& bytes, bool finish = true) {
        auto pipe = wrenn::http::make_body_pipe();
        REQUIRE(pipe.ok());
        HttpRequest req{http::verb::post, "/sandboxes/import" + query, 11};
        req.set(http::field::content_type, wrenn::archive::kContentType);
        auto promise = std::make_shared<std::promise<HttpResponse>>();
        auto future = promise->get_future();
        std::thread client([&bytes, finish, writer = std::move(pipe->writer)]() mutable {
            if (writer.write(bytes).ok()) {
                if (finish) {
                    writer.finish();
                } else {
                    writer.fail(
                        wrenn::Error("read body", ECONNRESET, "the client closed the connection"));
                }
            }
        });
        api.handle_streamed(std::move(req), std::move(pipe->reader),
                            [promise](wrenn::http::Reply reply) {
                                promise->set_value(std::move(reply.response()));
                            });
        auto res = future.get();
        client.join();
        return res;
    }

    static json::value body_of(const HttpResponse& res) { return json::parse(res.body()); }
    static std::string error_code(const HttpResponse& res) {
        return std::string(body_of(res).at("error").at("code").as_string());
    }
    static std::string error_message(const HttpResponse& res) {
        return std::string(body_of(res).at("error").at("message").as_string());
    }
    bool folder_exists(const std::string& id) const {
        return std::filesystem::exists(store->sandbox_dir(id));
    }
    // base.img is all zeros (a sparse file).
    std::string base_digest() const {
        return expected_blocks_digest(std::string(platform.origin_size, '\0'));
    }
};

}  // namespace

TEST_CASE("export of a paused sandbox, imported under another id: the same chunks, paused",
          "[api][transfer]") {
    TransferFixture f;
    REQUIRE(f.create("sb1").ok());
    REQUIRE(f.pause("sb1").ok());
    f.write_changes("sb1");
    const bool compress = GENERATE(true, false);
    auto exported = f.export_of("sb1", compress ? "" : "?compress=false");
    REQUIRE(exported.status == 200);
    CHECK(exported.complete);
    CHECK(exported.content_type == "application/vnd.wrenn.sandbox");

    // The archive says what it is over, and holds the changed chunks.
    std::optional<wrenn::archive::Header> header;
    std::vector<std::uint64_t> indexes;
    wrenn::archive::Reader reader(
        [&](const wrenn::archive::Header& h) -> wrenn::Result<void> {
            header = h;
            return wrenn::success();
        },
        [&](std::uint64_t index, std::span<const std::byte>) -> wrenn::Result<void> {
            indexes.push_back(index);
            return wrenn::success();
        });
    REQUIRE(reader.feed(exported.bytes).ok());
    REQUIRE(reader.finish().ok());
    REQUIRE(header);
    CHECK(header->compressed == compress);
    CHECK(header->template_digest_name() == f.base_digest());
    CHECK(header->template_name == "base.img");
    CHECK(header->origin_bytes == f.platform.origin_size);
    CHECK(indexes == f.changed);

    auto res = f.import("?id=sb2", exported.bytes);
    INFO(res.body());
    REQUIRE(res.result_int() == 201);
    auto body = TransferFixture::body_of(res);
    CHECK(body.at("id").as_string() == "sb2");
    CHECK(body.at("state").as_string() == "paused");
    CHECK(body.at("template").as_string() == "base");
    // What the kernel will report for it once resumed: header, metadata chunk, 4 data chunks.
    CHECK(body.at("cow").at("allocated_bytes").as_int64() == 6 * 4096);
    CHECK(sandbox_chunks(f.store->cow_path("sb2"), f.platform.origin_size) ==
          sandbox_chunks(f.store->cow_path("sb1"), f.platform.origin_size));
    CHECK(std::filesystem::file_size(f.store->cow_path("sb2")) ==
          std::filesystem::file_size(f.store->cow_path("sb1")));
    // It is a sandbox like any other: it survives a restart and resumes.
    f.restart();
    auto resumed = f.resume("sb2");
    REQUIRE(resumed.ok());
    CHECK(resumed->state == SandboxState::Running);
}

TEST_CASE("a version 1 archive, naming the whole image's SHA-256, still imports",
          "[api][transfer]") {
    TransferFixture f;
    REQUIRE(f.create("sb1").ok());
    f.write_changes("sb1");
    REQUIRE(f.pause("sb1").ok());
    auto exported = f.export_of("sb1", "?compress=false");
    REQUIRE(exported.status == 200);
    // What an agent before block digests wrote: version 1, the SHA-256 of the whole template
    // (64 MiB of zeros here), and the trailer's SHA-256 over everything before the end magic.
    Bytes v1 = exported.bytes;
    v1[8] = std::byte{1};
    wrenn::Sha256 whole;
    whole.update(std::string(f.platform.origin_size, '\0'));
    const auto digest = whole.digest();
    std::memcpy(&v1[40], digest.data(), digest.size());
    const std::size_t end_magic = v1.size() - 40;
    wrenn::Sha256 trailer;
    trailer.update(v1.data(), end_magic);
    const auto sum = trailer.digest();
    std::memcpy(&v1[end_magic + 8], sum.data(), sum.size());

    auto res = f.import("?id=old", v1);
    INFO(res.body());
    REQUIRE(res.result_int() == 201);
    CHECK(sandbox_chunks(f.store->cow_path("old"), f.platform.origin_size) ==
          sandbox_chunks(f.store->cow_path("sb1"), f.platform.origin_size));
    // The sandbox records the template's blocks digest, never the archive's older kind.
    CHECK(f.recorded_digest("old") == f.base_digest());

    // The same archive naming other content: 409, naming the digest by its algorithm.
    v1[40] ^= std::byte{1};
    wrenn::Sha256 again;
    again.update(v1.data(), end_magic);
    const auto sum2 = again.digest();
    std::memcpy(&v1[end_magic + 8], sum2.data(), sum2.size());
    auto mismatch = f.import("?id=other", v1);
    CHECK(mismatch.result_int() == 409);
    CHECK_THAT(TransferFixture::error_message(mismatch), Catch::Contains("with digest sha256:"));
    CHECK_FALSE(f.folder_exists("other"));
}

TEST_CASE("export of a running sandbox reads a point-in-time copy, then removes it",
          "[api][transfer]") {
    TransferFixture f;
    REQUIRE(f.create("sb1").ok());
    REQUIRE_FALSE(f.recorded_digest("sb1").empty());  // no record write after this
    f.manager->wait_idle();
    f.write_changes("sb1");  // as if the running device had written them
    f.platform.calls.clear();
    auto exported = f.export_of("sb1");
    REQUIRE(exported.status == 200);
    CHECK(exported.complete);
    // Suspended for the copy only, then resumed; the copy is gone afterwards.
    CHECK(std::find(f.platform.calls.begin(), f.platform.calls.end(), "suspend sb1") !=
          f.platform.calls.end());
    CHECK(std::find(f.platform.calls.begin(), f.platform.calls.end(), "resume sb1") !=
          f.platform.calls.end());
    CHECK(f.platform.suspended.empty());
    std::vector<std::string> files;
    for (const auto& e : std::filesystem::directory_iterator(f.store->sandbox_dir("sb1"))) {
        files.push_back(e.path().filename().string());
    }
    std::sort(files.begin(), files.end());
    CHECK(files == std::vector<std::string>{"rootfs.cow", "sandbox.json"});
    auto res = f.import("?id=copy", exported.bytes);
    REQUIRE(res.result_int() == 201);
    CHECK(sandbox_chunks(f.store->cow_path("copy"), f.platform.origin_size).size() == 4);
}

TEST_CASE("export refusals are JSON errors before any byte", "[api][transfer]") {
    TransferFixture f;
    auto missing = f.export_of("nope");
    CHECK(missing.status == 404);
    CHECK(missing.error_code == "not_found");
    REQUIRE(f.create("sb1").ok());
    REQUIRE(f.pause("sb1").ok());
    auto bad_query = f.export_of("sb1", "?compress=maybe");
    CHECK(bad_query.status == 400);
    // A paused sandbox whose device is still live: its CoW may change under the reader.
    f.platform.devices["sb1"] = "/dev/loop7";
    auto live = f.export_of("sb1");
    CHECK(live.status == 409);
    CHECK(live.error_code == "invalid_state");
    f.platform.devices.erase("sb1");
    f.platform.cow_valid = false;
    auto invalid = f.export_of("sb1");
    CHECK(invalid.status == 409);
    CHECK(invalid.error_code == "snapshot_invalid");
    f.platform.cow_valid = true;
    // A TCMU origin has no template digest to name.
    auto tcmu = f.wait<Sandbox>([&](auto cb) {
        f.manager->create(CreateRequest{"t1", "",
                                        OriginSpec{OriginSpec::Type::Tcmu, "/c.json", "overlaybd",
                                                   1 << 20, std::nullopt}},
                          cb);
    });
    REQUIRE(tcmu.ok());
    auto refused = f.export_of("t1");
    CHECK(refused.status == 409);
    CHECK(refused.error_code == "invalid_state");
    f.platform.kernel.device_mapper = false;
    f.platform.kernel.device_mapper_reason = "the kernel has no device-mapper";
    auto no_dm = f.export_of("sb1");
    CHECK(no_dm.status == 503);
    CHECK(no_dm.error_code == "unavailable");
    f.platform.kernel.device_mapper = true;
    auto wrong_method = f.call(http::verb::post, "/sandboxes/sb1/export");
    REQUIRE_FALSE(wrong_method.streamed());
    CHECK(wrong_method.response().result_int() == 405);
}

TEST_CASE("export of a running sandbox with a corrupt CoW is an error, not a cut 200",
          "[api][transfer]") {
    TransferFixture f;
    REQUIRE(f.create("sb1").ok());
    f.manager->wait_idle();
    f.write_changes("sb1");
    // The header's magic broken, as a disk error or a stray write would leave it: the kernel
    // still reports the live snapshot active, so only the copy's store shows it.
    {
        std::fstream cow(f.store->cow_path("sb1"), std::ios::in | std::ios::out | std::ios::binary);
        cow.write("XXXX", 4);
    }
    auto exported = f.export_of("sb1");
    CHECK(exported.status == 409);
    CHECK(exported.error_code == "snapshot_invalid");
    CHECK(f.platform.suspended.empty());
    CHECK_FALSE(std::filesystem::exists(f.store->export_copy_path("sb1")));
}

TEST_CASE("export of a CoW whose store names chunks past its end is refused before any byte",
          "[api][transfer]") {
    TransferFixture f;
    REQUIRE(f.create("sb1").ok());
    REQUIRE(f.pause("sb1").ok());
    f.write_changes("sb1");
    // The store names a chunk past the end of the file (a CoW cut short): the store's check
    // before the 200 finds it, where the stream once found it half-way.
    std::filesystem::resize_file(f.store->cow_path("sb1"), 4 * 4096);
    auto exported = f.export_of("sb1");
    CHECK(exported.status == 409);
    CHECK(exported.error_code == "snapshot_invalid");
}

TEST_CASE("import refusals leave no record, CoW or folder", "[api][transfer]") {
    TransferFixture f;
    REQUIRE(f.create("sb1").ok());
    REQUIRE(f.pause("sb1").ok());
    f.write_changes("sb1");
    auto exported = f.export_of("sb1");
    REQUIRE(exported.complete);
    const Bytes& good = exported.bytes;

    SECTION("an id that exists: 409 already_exists") {
        auto res = f.import("?id=sb1", good);
        CHECK(res.result_int() == 409);
        CHECK(TransferFixture::error_code(res) == "already_exists");
    }
    SECTION("no id, or a bad one: 400") {
        CHECK(f.import("", good).result_int() == 400);
        CHECK(f.import("?id=../x", good).result_int() == 400);
    }
    SECTION("truncated or corrupt: 400 invalid_archive saying where") {
        for (std::size_t cut :
             {std::size_t{0}, std::size_t{30}, good.size() / 2, good.size() - 1}) {
            CAPTURE(cut);
            auto res = f.import("?id=sb2", Bytes(good.begin(), good.begin() + cut));
            CHECK(res.result_int() == 400);
            CHECK(TransferFixture::error_code(res) == "invalid_archive");
            CHECK_THAT(TransferFixture::error_message(res), Catch::Contains("at byte"));
            CHECK_FALSE(f.folder_exists("sb2"));
        }
        Bytes flipped = good;
        flipped[good.size() - 10] ^= std::byte{1};
        auto res = f.import("?id=sb2", flipped);
        CHECK(res.result_int() == 400);
        CHECK(TransferFixture::error_code(res) == "invalid_archive");
        CHECK_FALSE(f.folder_exists("sb2"));
    }
    SECTION("a template name that would forge a log line or break the JSON: 400, not echoed") {
        // The name starts at byte 72 ("base.img"): a newline and bytes that are not UTF-8.
        Bytes hostile = good;
        hostile[73] = std::byte{'\n'};
        hostile[74] = std::byte{0xff};
        hostile[75] = std::byte{0xfe};
        auto res = f.import("?id=sb2", hostile);
        CHECK(res.result_int() == 400);
        CHECK(TransferFixture::error_code(res) == "invalid_archive");  // the body is JSON
        CHECK_THAT(TransferFixture::error_message(res),
                   Catch::Contains("template name is not UTF-8 text"));
        CHECK(TransferFixture::error_message(res).find('\n') == std::string::npos);
        CHECK_FALSE(f.folder_exists("sb2"));
    }
    SECTION("an upload the client broke off: 400, nothing left") {
        auto res = f.import("?id=sb2", Bytes(good.begin(), good.begin() + good.size() / 2), false);
        CHECK(res.result_int() == 400);
        CHECK_THAT(TransferFixture::error_message(res),
                   Catch::Contains("the upload broke after") &&
                       Catch::Contains("the client closed the connection"));
        CHECK_FALSE(f.folder_exists("sb2"));
    }
    SECTION("no template with the archive's digest: 409 template_mismatch naming it") {
        const std::string needed = f.base_digest();
        // The same name, other bytes: a name proves nothing, the digest does.
        std::filesystem::remove(f.templates_dir() + "/base.img");
        std::ofstream(f.templates_dir() + "/base.img") << std::string(4096, 'x');
        auto res = f.import("?id=sb2", good);
        CHECK(res.result_int() == 409);
        CHECK(TransferFixture::error_code(res) == "template_mismatch");
        CHECK_THAT(TransferFixture::error_message(res), Catch::Contains(needed));
        CHECK_FALSE(f.folder_exists("sb2"));
    }
    SECTION("a template of another name with the same bytes is found by its digest") {
        std::filesystem::copy_file(f.templates_dir() + "/base.img",
                                   f.templates_dir() + "/renamed.img");
        std::filesystem::remove(f.templates_dir() + "/base.img");
        auto res = f.import("?id=sb2", good);
        REQUIRE(res.result_int() == 201);
        CHECK(TransferFixture::body_of(res).at("template").as_string() == "renamed");
    }
    SECTION("over --max-import-bytes: 413") {
        ApiOptions options;
        options.max_import_bytes = 100;
        Api small(*f.manager, f.platform, f.metrics, options);
        auto streamed =
            small.streamed_body(HttpRequest{http::verb::post, "/sandboxes/import?id=x", 11}.base());
        REQUIRE(streamed);
        CHECK(streamed->limit == 100);
        CHECK(streamed->media_type == "application/vnd.wrenn.sandbox");
        CHECK_FALSE(small.streamed_body(HttpRequest{http::verb::post, "/sandboxes", 11}.base()));
        // The worker counts too (the transport's limit aside): 413, nothing left.
        auto pipe = wrenn::http::make_body_pipe();
        REQUIRE(pipe.ok());
        std::thread client([&good, writer = std::move(pipe->writer)]() mutable {
            if (writer.write(good).ok()) {
                writer.finish();
            }
        });
        auto promise = std::make_shared<std::promise<HttpResponse>>();
        auto future = promise->get_future();
        small.handle_streamed(HttpRequest{http::verb::post, "/sandboxes/import?id=sb2", 11},
                              std::move(pipe->reader), [promise](wrenn::http::Reply reply) {
                                  promise->set_value(std::move(reply.response()));
                              });
        auto res = future.get();
        client.join();
        CHECK(res.result_int() == 413);
        CHECK(TransferFixture::error_code(res) == "payload_too_large");
        CHECK_FALSE(f.folder_exists("sb2"));
    }
    // Nothing of a refused import is left: only sb1.
    std::vector<std::string> folders;
    for (const auto& e : std::filesystem::directory_iterator(f.store->sandboxes_dir())) {
        folders.push_back(e.path().filename().string());
    }
    std::sort(folders.begin(), folders.end());
    CHECK((folders == std::vector<std::string>{"sb1"} ||
           folders == std::vector<std::string>{"sb1", "sb2"}));
    CHECK(f.platform.devices.empty());
    CHECK(f.platform.origin_refs.empty());
}

TEST_CASE("a copy left by a killed export goes at the next start, and with its sandbox",
          "[api][transfer]") {
    TransferFixture f;
    REQUIRE(f.create("sb1").ok());
    REQUIRE(f.create("sb2").ok());
    const std::string left = f.store->sandbox_dir("sb1") + "/export.cow.tmp-Ab12Cd";
    const std::string kept = f.store->sandbox_dir("sb1") + "/export.cow.tmp-toolong1";
    std::ofstream(left) << "copy";
    std::ofstream(kept) << "not ours";
    auto report = f.restart();
    CHECK(report.temp_files_removed == 1);
    CHECK_FALSE(std::filesystem::exists(left));
    CHECK(std::filesystem::exists(kept));  // not a name an export makes
    std::filesystem::remove(kept);
    const std::string again = f.store->sandbox_dir("sb2") + "/export.cow.tmp-Zz9Yy8";
    std::ofstream(again) << "copy";
    REQUIRE(f.destroy("sb2").ok());
    CHECK_FALSE(f.folder_exists("sb2"));
}
