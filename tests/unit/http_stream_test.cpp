// The HTTP transport's streamed bodies over real sockets: a route whose request body reaches
// a worker through a BodyReader, and responses a worker writes through a BodyWriter.
#include <array>
#include <atomic>
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>

#include "http/core/body_pipe.hpp"
#include "http/server.hpp"
#include "http_test_server.hpp"

namespace bhttp = boost::beast::http;
namespace net = boost::asio;
using namespace std::chrono_literals;
using namespace wrenn::http::testing;
using wrenn::http::Request;
using wrenn::http::Respond;
using wrenn::http::Response;
using wrenn::http::ServerOptions;

namespace {

using wrenn::http::BodyReader;
using wrenn::http::Reply;
using wrenn::http::StreamedBody;
using wrenn::http::StreamedResponse;

constexpr std::string_view kStreamType = "application/vnd.test";

// What the upload worker saw: the bytes, or the error that ended its reads.
struct Upload {
    std::mutex mutex;
    std::condition_variable cv;
    bool done = false;
    std::string bytes;
    int error = 0;
    std::string message;

    void finish(std::string got, int code, std::string why) {
        std::lock_guard lock(mutex);
        bytes = std::move(got);
        error = code;
        message = std::move(why);
        done = true;
        cv.notify_all();
    }
    bool wait(std::chrono::milliseconds timeout = 5s) {
        std::unique_lock lock(mutex);
        return cv.wait_for(lock, timeout, [&] { return done; });
    }
};

// POST /upload streams (limit bytes of kStreamType); a worker reads it whole (or until
// stop_after bytes, then answers 409 at once) and answers "got N".
ServerOptions upload_options(std::uint64_t limit) {
    ServerOptions opts;
    opts.streamed_body =
        [limit](const wrenn::http::RequestHeader& h) -> std::optional<StreamedBody> {
        if (h.method() == bhttp::verb::post && h.target() == "/upload") {
            return StreamedBody{std::string(kStreamType), limit};
        }
        return std::nullopt;
    };
    return opts;
}

void read_upload(Workers& workers, Upload& upload, Request&& req, BodyReader body, Respond respond,
                 std::size_t stop_after = SIZE_MAX) {
    workers.spawn([&upload, req = std::move(req),
                   body = std::make_shared<BodyReader>(std::move(body)), respond,
                   stop_after]() mutable {
        std::string got;
        std::array<std::byte, 4096> buffer{};
        for (;;) {
            if (got.size() >= stop_after) {
                body->close();
                upload.finish(got, 0, "stopped");
                Response res = text_response(req, "enough");
                res.result(bhttp::status::conflict);
                respond(std::move(res));
                return;
            }
            auto n = body->read(buffer);
            if (!n) {
                upload.finish(got, n.error().code(), n.error().message());
                Response res = text_response(req, "broken");
                res.result(bhttp::status::bad_request);
                respond(std::move(res));
                return;
            }
            if (*n == 0) {
                break;
            }
            got.append(reinterpret_cast<const char*>(buffer.data()), *n);
        }
        const std::size_t size = got.size();
        upload.finish(std::move(got), 0, "");
        respond(text_response(req, "got " + std::to_string(size)));
    });
}

std::string pattern(std::size_t size) {
    std::string s(size, '\0');
    for (std::size_t i = 0; i < size; ++i) {
        s[i] = static_cast<char>((i * 7 + i / 4096) & 0xff);
    }
    return s;
}

std::string upload_request(std::string_view body, std::string_view type = kStreamType,
                           std::string_view target = "/upload") {
    return "POST " + std::string(target) +
           " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " + std::string(type) +
           "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + std::string(body);
}

}  // namespace

TEST_CASE("http server: a streamed upload reaches the worker whole, then keep-alive goes on",
          "[http][stream]") {
    Workers workers;
    Upload upload;
    auto opts = upload_options(8 << 20);
    opts.stream_handler = [&](Request&& req, BodyReader body, Respond respond) {
        CHECK(req.body().empty());
        read_upload(workers, upload, std::move(req), std::move(body), std::move(respond));
    };
    TestServer ts(opts, echo);
    const std::string data = pattern(3 << 20);  // far more than the socket buffers hold
    Client c(ts.port());
    REQUIRE(c.send(upload_request(data)));
    auto res = c.read_response();
    REQUIRE(res);
    CHECK(res->result() == bhttp::status::ok);
    CHECK(res->body() == "got " + std::to_string(data.size()));
    REQUIRE(upload.wait());
    CHECK(upload.bytes == data);
    CHECK(upload.error == 0);
    CHECK(res->keep_alive());
    // The same connection serves the next (ordinary) request.
    REQUIRE(c.send(get("/after")));
    auto next = c.read_response();
    REQUIRE(next);
    CHECK(next->body() == "GET /after");
    workers.join();
}

TEST_CASE("http server: a chunked streamed upload with Expect: 100-continue", "[http][stream]") {
    Workers workers;
    Upload upload;
    auto opts = upload_options(1 << 20);
    opts.stream_handler = [&](Request&& req, BodyReader body, Respond respond) {
        read_upload(workers, upload, std::move(req), std::move(body), std::move(respond));
    };
    TestServer ts(opts, echo);
    Client c(ts.port());
    REQUIRE(
        c.send("POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
               "application/vnd.test\r\nTransfer-Encoding: chunked\r\nExpect: "
               "100-continue\r\n\r\n"));
    auto cont = c.read_response();
    REQUIRE(cont);
    CHECK(cont->result() == bhttp::status::continue_);
    const std::string data = pattern(100000);
    std::string chunks;
    for (std::size_t at = 0; at < data.size(); at += 30000) {
        const std::string piece = data.substr(at, 30000);
        char size[16];
        std::snprintf(size, sizeof size, "%zx", piece.size());
        chunks += std::string(size) + "\r\n" + piece + "\r\n";
    }
    REQUIRE(c.send(chunks + "0\r\n\r\n"));
    auto res = c.read_response();
    REQUIRE(res);
    CHECK(res->body() == "got 100000");
    REQUIRE(upload.wait());
    CHECK(upload.bytes == data);
}

TEST_CASE("http server: an upload cut short by the client is an error to the worker, not EOF",
          "[http][stream]") {
    Workers workers;
    Upload upload;
    auto opts = upload_options(8 << 20);
    opts.stream_handler = [&](Request&& req, BodyReader body, Respond respond) {
        read_upload(workers, upload, std::move(req), std::move(body), std::move(respond));
    };
    TestServer ts(opts, echo);
    const bool reset = GENERATE(false, true);
    {
        Client c(ts.port());
        const std::string data = pattern(1 << 20);
        const std::string request = upload_request(data);
        REQUIRE(c.send(request.substr(0, request.size() - data.size() / 2)));
        std::this_thread::sleep_for(50ms);
        if (reset) {
            c.reset();
        } else {
            c.close();
        }
    }
    REQUIRE(upload.wait());
    CHECK(upload.error == ECONNRESET);
    CHECK_THAT(upload.message, Catch::Contains("the client closed the connection after"));
    CHECK(upload.bytes.size() < (1u << 20));
    CHECK(ts.wait_connections(0));
    workers.join();
}

TEST_CASE("http server: a streamed upload over its limit gets 413", "[http][stream]") {
    Workers workers;
    Upload upload;
    std::atomic<int> handled{0};
    auto opts = upload_options(50000);
    opts.stream_handler = [&](Request&& req, BodyReader body, Respond respond) {
        ++handled;
        read_upload(workers, upload, std::move(req), std::move(body), std::move(respond));
    };
    TestServer ts(opts, echo);
    SECTION("a Content-Length over it: refused before the handler") {
        Client c(ts.port());
        c.send(upload_request(pattern(50001)));
        auto res = c.read_response();
        REQUIRE(res);
        check_json_error(*res, bhttp::status::payload_too_large, "payload_too_large");
        CHECK_FALSE(res->keep_alive());
        CHECK(handled == 0);
    }
    SECTION("a chunked body that grows over it: the worker's read fails with EFBIG") {
        Client c(ts.port());
        std::string req =
            "POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/vnd.test\r\n"
            "Transfer-Encoding: chunked\r\n\r\n";
        for (int i = 0; i < 4; ++i) {
            req += "4000\r\n" + std::string(0x4000, 'y') + "\r\n";
        }
        c.send(req + "0\r\n\r\n");
        auto res = c.read_response();
        REQUIRE(res);
        check_json_error(*res, bhttp::status::payload_too_large, "payload_too_large");
        REQUIRE(upload.wait());
        CHECK(upload.error == EFBIG);
        CHECK(c.closed_by_server());
    }
    workers.join();
}

TEST_CASE("http server: a streamed route takes only its own media type; JSON routes not it",
          "[http][stream]") {
    std::atomic<int> handled{0};
    auto opts = upload_options(1 << 20);
    opts.stream_handler = [&](Request&& req, BodyReader, Respond respond) {
        ++handled;
        respond(text_response(req, "streamed"));
    };
    TestServer ts(opts, echo);
    for (const std::string type : {"application/json", "text/plain", ""}) {
        CAPTURE(type);
        Client c(ts.port());
        std::string req = type.empty() ? "POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                         "Content-Length: 2\r\n\r\n{}"
                                       : upload_request("{}", type);
        c.send(req);
        auto res = c.read_response();
        REQUIRE(res);
        check_json_error(*res, bhttp::status::unsupported_media_type, "unsupported_media_type");
        CHECK_THAT(res->body(), Catch::Contains("application/vnd.test"));
    }
    CHECK(handled == 0);
    // Every other route keeps the JSON-only rule, the streamed type included.
    Client other(ts.port());
    other.send(upload_request("xx", kStreamType, "/sandboxes"));
    auto res = other.read_response();
    REQUIRE(res);
    check_json_error(*res, bhttp::status::unsupported_media_type, "unsupported_media_type");
    // A type with parameters, in another case, is the same type.
    Client ok(ts.port());
    REQUIRE(ok.send(upload_request("ab", "Application/Vnd.Test; v=1")));
    auto fine = ok.read_response();
    REQUIRE(fine);
    CHECK(fine->body() == "streamed");
    CHECK_FALSE(fine->keep_alive());  // answered without reading the body
}

TEST_CASE("http server: a worker that answers before the end of the body closes the connection",
          "[http][stream]") {
    Workers workers;
    Upload upload;
    auto opts = upload_options(64 << 20);
    opts.stream_handler = [&](Request&& req, BodyReader body, Respond respond) {
        read_upload(workers, upload, std::move(req), std::move(body), std::move(respond), 1000);
    };
    TestServer ts(opts, echo);
    Client c(ts.port());
    const std::string data = pattern(8 << 20);
    std::thread sender([&] { c.send(upload_request(data)); });  // blocks once nobody reads
    auto res = c.read_response();
    REQUIRE(res);
    CHECK(res->result() == bhttp::status::conflict);
    CHECK_FALSE(res->keep_alive());
    CHECK(c.closed_by_server(10s));
    sender.join();
    REQUIRE(upload.wait());
    CHECK(upload.bytes.size() >= 1000);
    workers.join();
}

TEST_CASE("http server: a streamed response is sent chunked, byte for byte", "[http][stream]") {
    Workers workers;
    const std::string data = pattern(3 << 20);
    TestServer ts({}, [&](Request&&, Respond respond) {
        auto pipe = wrenn::http::make_body_pipe();
        REQUIRE(pipe.ok());
        StreamedResponse res{{}, std::move(pipe->reader)};
        res.header.result(bhttp::status::ok);
        res.header.set(bhttp::field::content_type, kStreamType);
        respond(std::move(res));
        auto writer = std::make_shared<wrenn::http::BodyWriter>(std::move(pipe->writer));
        workers.spawn([&data, writer] {
            for (std::size_t at = 0; at < data.size(); at += 100000) {
                const std::string_view piece = std::string_view(data).substr(at, 100000);
                if (!writer->write(std::as_bytes(std::span(piece.data(), piece.size()))).ok()) {
                    return;
                }
            }
            writer->finish();
        });
    });
    Client c(ts.port());
    for (int i = 0; i < 2; ++i) {  // and again on the same connection
        REQUIRE(c.send(get("/download")));
        auto res = c.read_response(10s);
        REQUIRE(res);
        CHECK(res->result() == bhttp::status::ok);
        CHECK(res->chunked());
        CHECK((*res)[bhttp::field::content_type] == kStreamType);
        CHECK(res->body().size() == data.size());
        CHECK(res->body() == data);
        CHECK(res->keep_alive());
    }
    workers.join();
}

TEST_CASE("http server: a streamed response whose worker fails aborts the connection",
          "[http][stream]") {
    Workers workers;
    const std::string data = pattern(100000);
    const bool fail_explicitly = GENERATE(true, false);
    TestServer ts({}, [&](Request&&, Respond respond) {
        auto pipe = wrenn::http::make_body_pipe();
        REQUIRE(pipe.ok());
        StreamedResponse res{{}, std::move(pipe->reader)};
        res.header.result(bhttp::status::ok);
        respond(std::move(res));
        auto writer = std::make_shared<wrenn::http::BodyWriter>(std::move(pipe->writer));
        workers.spawn([&, writer]() mutable {
            (void)writer->write(std::as_bytes(std::span(data.data(), data.size())));
            if (fail_explicitly) {
                writer->fail(wrenn::Error("export", EIO, "injected"));
            }
            writer.reset();
            // else: the writer goes away without finish()
        });
    });
    Client c(ts.port());
    REQUIRE(c.send(get("/download")));
    CHECK_FALSE(c.read_response());  // no last chunk: the response never completes
    CHECK(ts.wait_connections(0));
    workers.join();
}

TEST_CASE("http server: a client gone mid-download stops the worker's writes", "[http][stream]") {
    Workers workers;
    Upload seen;  // reused: the writer's error
    TestServer ts({}, [&](Request&&, Respond respond) {
        auto pipe = wrenn::http::make_body_pipe();
        REQUIRE(pipe.ok());
        StreamedResponse res{{}, std::move(pipe->reader)};
        res.header.result(bhttp::status::ok);
        respond(std::move(res));
        auto writer = std::make_shared<wrenn::http::BodyWriter>(std::move(pipe->writer));
        workers.spawn([&, writer] {
            const std::string piece(65536, 'z');
            for (;;) {  // endless: only the client's going away stops it
                auto ok = writer->write(std::as_bytes(std::span(piece.data(), piece.size())));
                if (!ok) {
                    seen.finish("", ok.error().code(), ok.error().message());
                    return;
                }
            }
        });
    });
    {
        Client c(ts.port());
        REQUIRE(c.send(get("/download")));
        std::this_thread::sleep_for(50ms);
        c.reset();
    }
    REQUIRE(seen.wait());
    CHECK(seen.error == EPIPE);
    workers.join();
}
