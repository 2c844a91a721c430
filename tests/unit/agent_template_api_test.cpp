// The template routes through the Api over the fake platform: PUT /templates/{name} in each
// form, GET /templates/{name} and its image, DELETE, and a create that names a digest. Every
// refused upload leaves nothing in the templates dir.
#include <sys/stat.h>
#include <zstd.h>

#include <boost/json.hpp>
#include <catch2/catch.hpp>
#include <cerrno>
#include <filesystem>
#include <random>
#include <thread>

#include "agent_fixture.hpp"
#include "archive/format.hpp"
#include "common/file.hpp"
#include "http/core/body_pipe.hpp"

using namespace wrenn::agent;
using namespace wrenn::agent::testing;
namespace http = boost::beast::http;
namespace json = boost::json;
using Bytes = std::vector<std::byte>;

namespace {

Bytes noise_image(std::size_t size, unsigned seed) {
    std::mt19937 rng(seed);
    Bytes out(size, std::byte{0});
    // Data in the first 256 KiB and in the last 4 KiB, zeros between.
    for (std::size_t i = 0; i < 256 * 1024; ++i) {
        out[i] = static_cast<std::byte>(rng() & 0xff);
    }
    for (std::size_t i = size - 4096; i < size; ++i) {
        out[i] = static_cast<std::byte>(rng() & 0xff);
    }
    return out;
}

std::string digest_of(const Bytes& bytes) {
    return expected_blocks_digest(
        std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
}

struct TemplateApiFixture : AgentFixture {
    explicit TemplateApiFixture(SandboxManager::Options o = {}, ApiOptions a = {})
        : AgentFixture(std::move(o)), api(*manager, platform, metrics, a) {}
    Api api;

    wrenn::http::Reply call(http::verb verb, const std::string& target, std::string body = "") {
        HttpRequest req{verb, target, 11};
        if (!body.empty()) {
            req.set(http::field::content_type, "application/json");
            req.body() = std::move(body);
            req.prepare_payload();
        }
        auto promise = std::make_shared<std::promise<wrenn::http::Reply>>();
        auto future = promise->get_future();
        api.handle(std::move(req),
                   [promise](wrenn::http::Reply reply) { promise->set_value(std::move(reply)); });
        return future.get();
    }
    HttpResponse answer(http::verb verb, const std::string& target, std::string body = "") {
        auto reply = call(verb, target, std::move(body));
        REQUIRE_FALSE(reply.streamed());
        return std::move(reply.response());
    }

    // PUT /templates/... with `bytes` as the body, written by another thread; no content type
    // when empty; `finish` false: the client goes away after the bytes.
    HttpResponse put(const std::string& target, const Bytes& bytes, std::string content_type = "",
                     bool finish = true, bool length = true) {
        auto pipe = wrenn::http::make_body_pipe();
        REQUIRE(pipe.ok());
        HttpRequest req{http::verb::put, target, 11};
        if (!content_type.empty()) {
            req.set(http::field::content_type, content_type);
        }
        if (length) {
            req.set(http::field::content_length, std::to_string(bytes.size()));
        }
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

    Bytes image_stream(const std::string& name, std::string query = "") {
        auto reply = call(http::verb::get, "/templates/" + name + "/image" + query);
        REQUIRE(reply.streamed());
        auto& stream = reply.stream();
        CHECK(stream.header.result_int() == 200);
        CHECK(stream.header[http::field::content_type] == wrenn::archive::kImageContentType);
        Bytes out;
        std::array<std::byte, 8192> buffer{};
        for (;;) {
            auto n = stream.body.read(buffer);
            REQUIRE(n.ok());
            if (*n == 0) {
                return out;
            }
            out.insert(out.end(), buffer.begin(), buffer.begin() + *n);
        }
    }

    static json::value body_of(const HttpResponse& res) { return json::parse(res.body()); }
    static std::string error_code(const HttpResponse& res) {
        return std::string(body_of(res).at("error").at("code").as_string());
    }
    static std::string error_message(const HttpResponse& res) {
        return std::string(body_of(res).at("error").at("message").as_string());
    }
    // The files in the templates dir, sorted: what a refused upload must leave as it was.
    std::vector<std::string> template_files() const {
        std::vector<std::string> out;
        for (const auto& e : std::filesystem::directory_iterator(templates_dir())) {
            out.push_back(e.path().filename().string());
        }
        std::sort(out.begin(), out.end());
        return out;
    }
    std::string content_of(const std::string& name) const {
        auto text = wrenn::read_file(templates_dir() + "/" + name + ".img", 64 << 20);
        REQUIRE(text.ok());
        return *text;
    }
    static std::string text_of(const Bytes& b) {
        return std::string(reinterpret_cast<const char*>(b.data()), b.size());
    }
};

Bytes zstd_of(const Bytes& bytes) {
    Bytes out(ZSTD_compressBound(bytes.size()));
    const std::size_t n = ZSTD_compress(out.data(), out.size(), bytes.data(), bytes.size(), 3);
    REQUIRE(ZSTD_isError(n) == 0);
    out.resize(n);
    return out;
}

}  // namespace

TEST_CASE("PUT /templates/{name}: published 0444 with its digest known; the same again is a 200",
          "[api][templates]") {
    TemplateApiFixture f;
    const Bytes image = noise_image(2 << 20, 1);
    const std::string digest = digest_of(image);
    const bool zstd = GENERATE(false, true);
    const bool typed = GENERATE(false, true);
    const Bytes body = zstd ? zstd_of(image) : image;
    const std::string type = !typed ? "" : zstd ? "application/zstd" : "application/octet-stream";
    auto res = f.put("/templates/up?digest=" + digest, body, type);
    INFO(res.body());
    REQUIRE(res.result_int() == 201);
    const auto made = f.body_of(res);
    CHECK(made.at("template").as_string() == "up");
    CHECK(made.at("digest").as_string() == digest);
    CHECK(made.at("size_bytes").as_int64() == 2 << 20);
    CHECK(f.content_of("up") == f.text_of(image));
    struct stat st {};
    REQUIRE(::stat((f.templates_dir() + "/up.img").c_str(), &st) == 0);
    CHECK((st.st_mode & 07777) == 0444);
    // 256 KiB and 4 KiB of data: the zeros between are holes.
    CHECK(static_cast<std::uint64_t>(st.st_blocks) * 512 <= (260 + 16) * 1024);
    CHECK(f.template_files() == std::vector<std::string>{"base.img", "up.img"});

    // Known without a read: GET shows it, and no digest read of the new image happened.
    const auto hashed = f.platform.templates_hashed;
    auto info = f.answer(http::verb::get, "/templates/up");
    REQUIRE(info.result_int() == 200);
    CHECK(f.body_of(info).at("digest").as_string() == digest);
    CHECK(f.body_of(info).at("users").as_array().empty());
    CHECK(f.platform.templates_hashed == hashed);

    const auto mtime = st.st_mtim;
    auto again = f.put("/templates/up?digest=" + digest, body, type);
    CHECK(again.result_int() == 200);
    REQUIRE(::stat((f.templates_dir() + "/up.img").c_str(), &st) == 0);
    CHECK(st.st_mtim.tv_nsec == mtime.tv_nsec);
    CHECK(st.st_mtim.tv_sec == mtime.tv_sec);
}

TEST_CASE("GET /templates/{name}/image streams what PUT takes back, under any name",
          "[api][templates]") {
    TemplateApiFixture f;
    const Bytes image = noise_image(1 << 20, 2);
    const std::string digest = digest_of(image);
    REQUIRE(
        f.put("/templates/src?digest=" + digest, image, "application/octet-stream").result_int() ==
        201);
    const bool compress = GENERATE(true, false);
    const Bytes stream = f.image_stream("src", compress ? "" : "?compress=false");
    CHECK(stream.size() < (compress ? 270u << 10 : (260u << 10) + 4096 + 8 * 256));
    auto copied = f.put("/templates/copy?digest=" + digest, stream,
                        compress ? wrenn::archive::kImageContentType : "");
    REQUIRE(copied.result_int() == 201);
    CHECK(f.content_of("copy") == f.text_of(image));
}

TEST_CASE("refused uploads leave nothing in the templates dir", "[api][templates]") {
    SandboxManager::Options options;
    options.max_template_bytes = 4 << 20;
    TemplateApiFixture f(options);
    const Bytes image = noise_image(2 << 20, 3);
    const std::string digest = digest_of(image);
    const auto before = f.template_files();
    auto check_left_nothing = [&] { CHECK(f.template_files() == before); };

    SECTION("no digest, or not a blocks digest") {
        auto res = f.put("/templates/up", image);
        CHECK(res.result_int() == 400);
        CHECK(f.error_code(res) == "invalid_request");
        CHECK_THAT(f.error_message(res), Catch::Contains("digest"));
        CHECK(f.put("/templates/up?digest=sha256:" + std::string(64, 'a'), image).result_int() ==
              400);
    }
    SECTION("another image's digest") {
        auto res = f.put("/templates/up?digest=" + digest_of(noise_image(2 << 20, 4)), image);
        CHECK(res.result_int() == 400);
        CHECK(f.error_code(res) == "digest_mismatch");
        CHECK_THAT(f.error_message(res), Catch::Contains(digest));
    }
    SECTION("a client gone half-way") {
        const Bytes half(image.begin(), image.begin() + (1 << 20));
        auto res = f.put("/templates/up?digest=" + digest, half, "", false);
        CHECK(res.result_int() == 400);
        CHECK(f.error_code(res) == "invalid_image");
    }
    SECTION("a stream cut in half") {
        REQUIRE(f.put("/templates/src?digest=" + digest, image).result_int() == 201);
        const Bytes stream = f.image_stream("src");
        REQUIRE(std::filesystem::remove(f.templates_dir() + "/src.img"));
        const Bytes half(stream.begin(), stream.begin() + static_cast<long>(stream.size() / 2));
        auto res = f.put("/templates/up?digest=" + digest, half);
        CHECK(res.result_int() == 400);
        CHECK(f.error_code(res) == "invalid_image");
    }
    SECTION("over --max-template-bytes: from Content-Length, and as the bytes pass it") {
        const Bytes big(6 << 20, std::byte{1});
        auto res = f.put("/templates/up?digest=" + digest_of(big), big, "application/octet-stream");
        CHECK(res.result_int() == 413);
        CHECK_THAT(f.error_message(res), Catch::Contains("--max-template-bytes"));
        auto streamed =
            f.put("/templates/up?digest=" + digest_of(big), zstd_of(big), "", true, false);
        CHECK(streamed.result_int() == 413);
    }
    SECTION("no room on the templates filesystem") {
        f.platform.space = FreeSpace{1 << 20, 100 << 20};
        auto res = f.put("/templates/up?digest=" + digest, image);
        CHECK(res.result_int() == 507);
        CHECK(f.error_code(res) == "insufficient_storage");
        CHECK_THAT(f.error_message(res), Catch::Contains("free on"));
    }
    SECTION("the same name with another digest") {
        auto res = f.put("/templates/base?digest=" + digest, image);
        CHECK(res.result_int() == 409);
        CHECK(f.error_code(res) == "template_exists");
        CHECK_THAT(
            f.error_message(res),
            Catch::Contains(expected_blocks_digest(std::string(f.platform.origin_size, '\0'))));
    }
    check_left_nothing();
}

TEST_CASE("DELETE /templates/{name} refuses while sandboxes use it, then removes it",
          "[api][templates]") {
    TemplateApiFixture f;
    REQUIRE(f.create("sb1").ok());
    REQUIRE(f.create("sb2").ok());
    REQUIRE(f.pause("sb2").ok());
    auto info = f.answer(http::verb::get, "/templates/base");
    REQUIRE(info.result_int() == 200);
    const auto users = f.body_of(info).at("users").as_array();
    REQUIRE(users.size() == 2);
    CHECK(users[0].at("id").as_string() == "sb1");
    CHECK(users[0].at("state").as_string() == "running");
    CHECK(users[1].at("state").as_string() == "paused");

    auto refused = f.answer(http::verb::delete_, "/templates/base");
    CHECK(refused.result_int() == 409);
    CHECK(f.error_code(refused) == "template_in_use");
    CHECK_THAT(f.error_message(refused),
               Catch::Contains("sb1 (running)") && Catch::Contains("sb2 (paused)"));
    CHECK(std::filesystem::exists(f.templates_dir() + "/base.img"));

    REQUIRE(f.destroy("sb1").ok());
    REQUIRE(f.destroy("sb2").ok());
    auto deleted = f.answer(http::verb::delete_, "/templates/base");
    CHECK(deleted.result_int() == 204);
    CHECK_FALSE(std::filesystem::exists(f.templates_dir() + "/base.img"));
    CHECK(f.platform.loops_released_of ==
          std::vector<std::string>{f.templates_dir() + "/base.img"});
    CHECK(f.answer(http::verb::get, "/templates/base").result_int() == 404);
    CHECK(f.answer(http::verb::delete_, "/templates/base").result_int() == 404);
    CHECK(f.answer(http::verb::get, "/templates/base/other").result_int() == 404);
}

TEST_CASE("POST /sandboxes with a digest as its template picks the image with that content",
          "[api][templates]") {
    TemplateApiFixture f;
    f.platform.hold_digest_reads = true;  // base.img's digest stays pending until released
    const Bytes image = noise_image(1 << 20, 5);
    const std::string digest = digest_of(image);
    REQUIRE(f.put("/templates/named-anything?digest=" + digest, image).result_int() == 201);
    auto made = f.answer(http::verb::post, "/sandboxes",
                         R"({"id": "sb1", "template": ")" + digest + R"("})");
    REQUIRE(made.result_int() == 201);
    CHECK(f.body_of(made).at("template").as_string() == "named-anything");

    // base.img's digest is not known yet: a digest nobody is known to have may be base's.
    const std::string unknown = digest_of(noise_image(1 << 20, 6));
    auto pending = f.answer(http::verb::post, "/sandboxes",
                            R"({"id": "sb2", "template": ")" + unknown + R"("})");
    CHECK(pending.result_int() == 503);
    CHECK(f.error_code(pending) == "digest_pending");
    CHECK_THAT(f.error_message(pending), Catch::Contains("base"));
    f.platform.release_digest_reads();
    for (int i = 0; i < 500; ++i) {
        auto base = f.answer(http::verb::get, "/templates/base");
        if (f.body_of(base).at("digest").is_string() &&
            f.body_of(base).at("digest").as_string().starts_with("blocks-")) {
            break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    auto missing = f.answer(http::verb::post, "/sandboxes",
                            R"({"id": "sb2", "template": ")" + unknown + R"("})");
    CHECK(missing.result_int() == 404);
    CHECK(f.error_code(missing) == "template_not_found");
    CHECK_THAT(f.error_message(missing), Catch::Contains(unknown));
}

TEST_CASE("PUT /templates/{name} on a host with no templates folder yet makes it",
          "[api][templates]") {
    TemplateApiFixture f;
    std::filesystem::remove_all(f.templates_dir());
    const Bytes image = noise_image(1 << 20, 5);
    auto res = f.put("/templates/first?digest=" + digest_of(image), image, "");
    INFO(res.body());
    REQUIRE(res.result_int() == 201);
    CHECK(f.content_of("first") == f.text_of(image));
    struct stat st {};
    REQUIRE(::stat(f.templates_dir().c_str(), &st) == 0);
    CHECK((st.st_mode & 07777) == 0755);
}
