// libFuzzer target: arbitrary bytes as they would arrive on a connection. Beast's request parser
// reads them with the server's limits; every request that parses goes to Api::handle over a
// FakePlatform, a state dir in a temp folder and a worker pool, as agent/daemon/serve.cpp wires
// them. Checked for each request: respond is called exactly once, the response serializes to valid
// HTTP that parses back, its status is one docs/api.md lists, and its body is JSON (or the
// Prometheus text of /metrics, or empty for 204). Between inputs every sandbox is destroyed
// and every flattened template removed, so that an input behaves the same whenever it runs.

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/thread_pool.hpp>
#include <boost/beast/core/buffer_traits.hpp>
#include <boost/beast/core/buffers_range.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/serializer.hpp>
#include <boost/json.hpp>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <memory>
#include <sstream>
#include <string>

#include "agent/api/api.hpp"
#include "agent/sandboxes/sandbox_manager.hpp"
#include "agent/state/state_store.hpp"
#include "fake_platform.hpp"

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace fs = std::filesystem;
using namespace wrenn::agent;
using wrenn::Result;

namespace {

constexpr std::size_t kBodyLimit = 64 * 1024;  // http::ServerOptions defaults
constexpr std::size_t kHeaderLimit = 8 * 1024;
constexpr int kMaxRequestsPerInput = 16;

[[noreturn]] void fail(const std::string& what) {
    std::fprintf(stderr, "api_fuzz: %s\n", what.c_str());
    std::abort();
}

// One agent over a fake kernel, built once per process (libFuzzer runs inputs in one process).
struct World {
    fs::path root;
    wrenn::agent::testing::FakePlatform platform;
    Metrics metrics;
    boost::asio::thread_pool workers{2};
    std::unique_ptr<StateStore> store;
    std::unique_ptr<SandboxManager> manager;
    std::unique_ptr<Api> api;

    World() {
        // tmpfs when there is one: the state store fsyncs every record, which on a disk
        // costs more than everything else an input does.
        std::error_code shm_ec;
        const fs::path base =
            fs::is_directory("/dev/shm", shm_ec) ? fs::path("/dev/shm") : fs::temp_directory_path();
        std::string tmpl = (base / "wrenn-fuzz-XXXXXX").string();
        if (::mkdtemp(tmpl.data()) == nullptr) {
            fail("mkdtemp failed");
        }
        root = tmpl;
        fs::create_directories(templates_dir());
        {
            std::FILE* f = std::fopen((templates_dir() / "base.img").c_str(), "w");
            if (f == nullptr) {
                fail("cannot create base.img");
            }
            std::fclose(f);
            fs::resize_file(templates_dir() / "base.img", platform.origin_size);
        }
        auto opened = StateStore::open((root / "state").string());
        if (!opened.ok()) {
            fail("open state: " + opened.error().message());
        }
        store = std::make_unique<StateStore>(std::move(opened).value());
        manager = std::make_unique<SandboxManager>(
            platform, *store, SandboxManager::Options{templates_dir().string()}, workers, metrics);
        api = std::make_unique<Api>(*manager, platform, metrics);
    }

    ~World() {
        api.reset();
        manager.reset();
        workers.join();
        std::error_code ec;
        fs::remove_all(root, ec);
    }

    fs::path templates_dir() const { return root / "templates"; }

    // Back to one template and no sandboxes.
    void reset() {
        manager->wait_idle();
        for (const auto& sb : manager->list()) {
            std::promise<void> done;
            manager->destroy(sb.id, [&done](Result<Done, Failure>) { done.set_value(); });
            done.get_future().wait();
        }
        manager->wait_idle();
        std::error_code ec;
        for (const auto& entry : fs::directory_iterator(templates_dir(), ec)) {
            if (entry.path().filename() != "base.img") {
                fs::remove(entry.path(), ec);
            }
        }
        platform.kernel = wrenn::agent::KernelSupport{true, true, true, "", "", "", true};
    }
};

World& world() {
    static World* w = [] {
        spdlog::set_level(spdlog::level::off);
        auto* created = new World();  // never destroyed: libFuzzer may exit from any thread
        static const fs::path root = created->root;
        std::atexit([] {
            std::error_code ec;
            fs::remove_all(root, ec);
        });
        return created;
    }();
    return *w;
}

bool documented_status(unsigned status, const std::string& body) {
    switch (status) {
        case 200:
        case 201:
        case 204:
        case 400:
        case 401:
        case 404:
        case 405:
        case 409:
        case 413:
        case 431:
        case 503:
            return true;
        case 500:
            // Documented too, but over a fake kernel that never fails unasked it means the
            // agent hit an error it did not expect. The one real failure left: a TCMU origin
            // whose CoW is larger than the temp dir's filesystem allows (EFBIG).
            return body.find("File too large") != std::string::npos;
        default:
            return false;
    }
}

// The response as bytes on the wire, parsed back by Beast: it must be a valid HTTP message.
void check_response(const HttpRequest& request, const HttpResponse& res) {
    const unsigned status = res.result_int();
    if (!documented_status(status, res.body())) {
        fail("status " + std::to_string(status) + " for " + std::string(request.method_string()) +
             " " + std::string(request.target()) + ": " + res.body());
    }
    std::ostringstream wire;
    beast::error_code ec;
    HttpResponse copy = res;
    bhttp::serializer<false, bhttp::string_body> sr{copy};
    do {
        sr.next(ec, [&](beast::error_code&, const auto& buffers) {
            for (auto b : beast::buffers_range_ref(buffers)) {
                wire.write(static_cast<const char*>(b.data()),
                           static_cast<std::streamsize>(b.size()));
            }
            sr.consume(beast::buffer_bytes(buffers));
        });
        if (ec) {
            fail("serialize response: " + ec.message());
        }
    } while (!sr.is_done());
    const std::string bytes = wire.str();
    bhttp::response_parser<bhttp::string_body> parser;
    parser.eager(true);
    if (request.method() == bhttp::verb::head) {
        parser.skip(true);
    }
    parser.put(boost::asio::buffer(bytes), ec);
    if (ec || !parser.is_done()) {
        fail("response does not parse back: " + (ec ? ec.message() : "incomplete") + "\n" + bytes);
    }
    const auto& parsed = parser.get();
    if (parsed.result_int() != status) {
        fail("status changed on the wire");
    }
    if (request.method() == bhttp::verb::head) {
        return;  // the reply to HEAD has no body on the wire; the server drops it
    }
    if (status == 204) {
        if (!parsed.body().empty()) {
            fail("204 with a body");
        }
        return;
    }
    const auto type = parsed[bhttp::field::content_type];
    if (type.starts_with("text/plain")) {
        if (status != 200) {
            fail("text/plain for status " + std::to_string(status));
        }
        return;  // GET /metrics
    }
    if (type != "application/json") {
        fail("content type '" + std::string(type) + "'");
    }
    boost::system::error_code jec;
    auto value = boost::json::parse(parsed.body(), jec);
    if (jec || !value.is_object()) {
        fail("body is not a JSON object: " + parsed.body());
    }
    if (status >= 400) {
        const auto* err = value.as_object().if_contains("error");
        if (err == nullptr || !err->is_object() || !err->as_object().contains("code") ||
            !err->as_object().contains("message")) {
            fail("error body without error.code and error.message: " + parsed.body());
        }
    }
}

void handle_one(HttpRequest request) {
    World& w = world();
    struct Seen {
        std::atomic<int> calls{0};
        std::promise<HttpResponse> first;
    };
    auto seen = std::make_shared<Seen>();
    auto future = seen->first.get_future();
    const HttpRequest copy = request;
    w.api->handle(std::move(request), [seen](HttpResponse res) {
        if (seen->calls.fetch_add(1) == 0) {
            seen->first.set_value(std::move(res));
        }
    });
    if (future.wait_for(std::chrono::seconds(20)) != std::future_status::ready) {
        fail("no response within 20 s for " + std::string(copy.method_string()) + " " +
             std::string(copy.target()));
    }
    HttpResponse res = future.get();
    // Anything else the request started has finished: a second respond would have happened.
    w.manager->wait_idle();
    if (seen->calls.load() != 1) {
        fail("respond called " + std::to_string(seen->calls.load()) + " times");
    }
    check_response(copy, res);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    World& w = world();
    beast::string_view input(reinterpret_cast<const char*>(data), size);
    // Pipelined requests, one parser each, as the server's session reads them.
    for (int i = 0; i < kMaxRequestsPerInput && !input.empty(); ++i) {
        bhttp::request_parser<bhttp::string_body> parser;
        parser.body_limit(kBodyLimit);
        parser.header_limit(kHeaderLimit);
        parser.eager(true);
        beast::error_code ec;
        const std::size_t used = parser.put(boost::asio::buffer(input.data(), input.size()), ec);
        if (!ec && !parser.is_done()) {
            parser.put_eof(ec);  // the client closed: a body up to EOF may end here
        }
        if (ec || !parser.is_done()) {
            break;  // the server answers 400/413/431 itself or waits for more bytes
        }
        input.remove_prefix(used);
        handle_one(parser.release());
        if (used == 0) {
            break;
        }
    }
    w.reset();
    return 0;
}
