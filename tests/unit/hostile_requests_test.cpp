// Hostile input against the real transport and routes: http::Server + Api over a FakePlatform,
// on 127.0.0.1 port 0, fed raw bytes from a socket. Every case checks the status the server
// answers and that it keeps serving; the traversal cases also check that no file outside the
// state dir (a canary dir beside it, and everything else under the temp root) was touched.
#include <sys/resource.h>
#include <sys/stat.h>

#include <boost/json.hpp>
#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "agent_fixture.hpp"
#include "http/server.hpp"
#include "http_test_client.hpp"

namespace bhttp = boost::beast::http;
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using namespace wrenn::agent;
using wrenn::agent::testing::FakePlatform;
using wrenn::agent::testing::TempDir;
using wrenn::http::testing::Client;
using wrenn::http::testing::IoThreads;

namespace {

// Every file and folder under root with its size and mtime: touching anything changes this.
std::map<std::string, std::string> tree(const fs::path& root) {
    std::map<std::string, std::string> out;
    for (const auto& entry : fs::recursive_directory_iterator(root)) {
        struct stat st {};
        REQUIRE(::lstat(entry.path().c_str(), &st) == 0);
        out[entry.path().string()] = std::to_string(st.st_mode) + " " + std::to_string(st.st_size) +
                                     " " + std::to_string(st.st_mtim.tv_sec) + "." +
                                     std::to_string(st.st_mtim.tv_nsec);
    }
    return out;
}

// temp root/
//   canary/secret          must never change
//   agent/state/           the state dir
//   agent/templates/base.img
// The agent sits one level down so that an id climbing out of the state dir by "../../" still
// lands under the temp root, where tree() sees it.
struct HostileServer {
    TempDir tmp;
    TempDir sock_dir;  // a unix listener beside the TCP one, outside the tree() under watch
    FakePlatform platform;
    Metrics metrics;
    boost::asio::thread_pool workers{2};
    std::unique_ptr<StateStore> store;
    std::unique_ptr<SandboxManager> manager;
    std::unique_ptr<Api> api;
    IoThreads io;
    std::unique_ptr<wrenn::http::Server> server;

    explicit HostileServer(std::chrono::seconds read_timeout = 5s) {
        fs::create_directories(root() / "canary");
        fs::create_directories(templates_dir());
        wrenn::agent::testing::write_file((root() / "canary" / "secret").string(), 4096);
        wrenn::agent::testing::write_file((templates_dir() / "base.img").string(),
                                          platform.origin_size);
        auto opened = StateStore::open((root() / "agent" / "state").string());
        REQUIRE(opened.ok());
        store = std::make_unique<StateStore>(std::move(opened).value());
        manager = std::make_unique<SandboxManager>(
            platform, *store, SandboxManager::Options{templates_dir().string()}, workers, metrics);
        ApiOptions api_options;
        api_options.connections = [this] {
            return ConnectionCounts{server->connections(), server->connections_refused()};
        };
        api = std::make_unique<Api>(*manager, platform, metrics, std::move(api_options));

        // As the agent runs with --insecure-tcp: TCP without a token, so the Host is checked.
        wrenn::http::ServerOptions opts;
        wrenn::http::ListenAddress address;
        address.host = "127.0.0.1";
        opts.listen.push_back(address);
        wrenn::http::ListenAddress unix_address;
        unix_address.kind = wrenn::http::ListenAddress::Kind::Unix;
        unix_address.path = socket_path();
        opts.listen.push_back(unix_address);
        opts.read_timeout = read_timeout;
        opts.idle_timeout = 10s;
        // As serve.cpp wires it: POST /sandboxes/import streams its body.
        opts.streamed_body = [this](const wrenn::http::RequestHeader& header) {
            return api->streamed_body(header);
        };
        opts.stream_handler = [this](wrenn::http::Request&& req, wrenn::http::BodyReader body,
                                     wrenn::http::Respond respond) {
            api->handle_streamed(std::move(req), std::move(body), std::move(respond));
        };
        auto created = wrenn::http::Server::create(
            io.ioc, std::move(opts),
            [this](wrenn::http::Request&& req, wrenn::http::Respond respond) {
                api->handle(std::move(req), std::move(respond));
            });
        if (!created.ok()) {
            FAIL("create server: " << created.error().message());
        }
        server = std::move(*created);
        io.start();
    }

    ~HostileServer() {
        server.reset();
        io.stop();
        manager->wait_idle();
    }

    fs::path root() const { return tmp.path(); }
    fs::path templates_dir() const { return root() / "agent" / "templates"; }
    std::uint16_t port() const { return server->bound().at(0).port; }
    std::string socket_path() const { return sock_dir.path() + "/agent.sock"; }
};

// "+ path", "- path", "~ path" for what appeared, went or changed between two tree()s.
std::vector<std::string> changes(const std::map<std::string, std::string>& before,
                                 const std::map<std::string, std::string>& after) {
    std::vector<std::string> out;
    for (const auto& [path, meta] : after) {
        auto it = before.find(path);
        if (it == before.end()) {
            out.push_back("+ " + path);
        } else if (it->second != meta) {
            out.push_back("~ " + path);
        }
    }
    for (const auto& [path, meta] : before) {
        if (after.count(path) == 0) {
            out.push_back("- " + path);
        }
    }
    return out;
}

std::string request(std::string_view method, std::string_view target, std::string_view body = {},
                    std::string_view version = "HTTP/1.1") {
    std::string out = std::string(method) + " " + std::string(target) + " " + std::string(version) +
                      "\r\nHost: 127.0.0.1\r\n";
    if (!body.empty() || method == "POST") {
        out += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
               "\r\n";
    }
    return out + "\r\n" + std::string(body);
}

// Sends raw bytes on a fresh connection and reads one response.
wrenn::http::Response send_one(const HostileServer& s, const std::string& bytes) {
    Client c(s.port());
    REQUIRE(c.send(bytes));
    auto res = c.read_response();
    INFO("request: " << bytes.substr(0, 200));
    REQUIRE(res.has_value());
    return std::move(*res);
}

std::string error_code(const wrenn::http::Response& res) {
    boost::system::error_code ec;
    auto v = boost::json::parse(res.body(), ec);
    if (ec || !v.is_object() || !v.as_object().contains("error")) {
        return "<no JSON error body: " + res.body() + ">";
    }
    return std::string(v.at("error").at("code").as_string());
}

std::string error_message(const wrenn::http::Response& res) {
    boost::system::error_code ec;
    auto v = boost::json::parse(res.body(), ec);
    if (ec || !v.is_object() || !v.as_object().contains("error")) {
        return "<no JSON error body: " + res.body() + ">";
    }
    return std::string(v.at("error").at("message").as_string());
}

void require_alive(const HostileServer& s) {
    auto res = send_one(s, request("GET", "/healthz"));
    REQUIRE(res.result_int() == 200);
}

std::string create_body(std::string_view id_json, std::string_view template_json = "\"base\"") {
    return "{\"id\":" + std::string(id_json) + ",\"template\":" + std::string(template_json) + "}";
}

}  // namespace

TEST_CASE("hostile: traversal in ids and template names is refused and touches nothing",
          "[hostile]") {
    HostileServer s;
    // A paused sandbox, so that flatten's template name is checked for real.
    REQUIRE(send_one(s, request("POST", "/sandboxes", create_body("\"sb1\""))).result_int() == 201);
    REQUIRE(send_one(s, request("POST", "/sandboxes/sb1/pause")).result_int() == 200);
    // The template's digest, read in the background, is the record's last write.
    for (int i = 0; i < 1000 && s.manager->get("sb1")->origin.identity->digest.empty(); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    REQUIRE_FALSE(s.manager->get("sb1")->origin.identity->digest.empty());
    s.manager->wait_idle();
    const auto before = tree(s.root());
    const auto calls_before = s.platform.calls.size();

    const std::string long_id(300, 'a');
    const std::string huge_id(7000, 'b');
    const std::vector<std::string> paths = {
        "/sandboxes/..",
        "/sandboxes/../canary",
        "/sandboxes/..%2f..%2fcanary",
        "/sandboxes/%2e%2e%2f%2e%2e%2fcanary%2fsecret",
        "/sandboxes/%2e%2e",
        "/../../canary/secret",
        "/sandboxes/%00",
        "/sandboxes/sb1%00x",
        "/sandboxes/" + long_id,
        "/sandboxes/" + huge_id,
        "/sandboxes/%C3%A9t%C3%A9",
        "/sandboxes/\xc3\xa9t\xc3\xa9",
        "/sandboxes/.sb1",
        "/sandboxes/-sb1",
        "/sandboxes/~root",
    };
    SECTION("in the path, for every method and action") {
        for (const auto& path : paths) {
            for (const auto* suffix : {"", "/pause", "/resume", "/flatten"}) {
                for (const auto* method : {"GET", "DELETE", "POST"}) {
                    const std::string target = path + suffix;
                    auto res = send_one(
                        s, request(method, target,
                                   std::string(suffix) == "/flatten" ? R"({"template":"t"})" : ""));
                    INFO(method << " " << target.substr(0, 120) << " -> " << res.result_int() << " "
                                << res.body());
                    CHECK((res.result_int() == 400 || res.result_int() == 404 ||
                           res.result_int() == 405));
                    CHECK(res.result_int() != 405);  // never reaches a real route
                }
            }
        }
    }
    SECTION("a NUL byte in the request target is malformed HTTP") {
        auto res = send_one(s, std::string("GET /sandboxes/sb1") + '\0' +
                                   "/../x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        CHECK(res.result_int() == 400);
    }
    SECTION("in the JSON of create and flatten") {
        const std::vector<std::string> names = {
            R"("..")",
            R"("../canary")",
            R"("../../canary/secret")",
            R"("..%2fcanary")",
            R"("%2e%2e%2f%2e%2e%2fcanary")",
            R"("/tmp/x")",
            R"("/etc/passwd")",
            R"("sb1/../../canary")",
            R"("a\u0000b")",
            R"("base\u0000")",
            "\"" + long_id + "\"",
            R"("\u00e9t\u00e9")",
            "\"\xc3\xa9t\xc3\xa9\"",
            R"("sb\u202e1")",
            R"("")",
            R"(" base")",
            R"("base.img")",
            R"(".")",
        };
        for (const auto& name : names) {
            INFO("name " << name.substr(0, 80));
            if (name != R"("")") {  // an empty id means "make one": not an error
                auto by_id = send_one(s, request("POST", "/sandboxes", create_body(name)));
                CHECK(by_id.result_int() == 400);
                CHECK_THAT(error_message(by_id), Catch::Contains("'id'"));
            }
            auto by_template =
                send_one(s, request("POST", "/sandboxes", create_body("\"sb2\"", name)));
            CHECK(by_template.result_int() == 400);
            CHECK_THAT(error_message(by_template), Catch::Contains("'template'"));
            auto flatten = send_one(
                s, request("POST", "/sandboxes/sb1/flatten", "{\"template\":" + name + "}"));
            CHECK(flatten.result_int() == 400);
            CHECK_THAT(error_message(flatten), Catch::Contains("'template'"));
        }
    }
    SECTION("a TCMU config path is the one absolute path the API takes, and is not opened") {
        auto relative = send_one(
            s, request("POST", "/sandboxes",
                       R"({"id":"t1","origin":{"type":"tcmu","config":"../../canary/secret"}})"));
        CHECK(relative.result_int() == 400);
        auto handler = send_one(
            s,
            request(
                "POST", "/sandboxes",
                R"({"id":"t1","origin":{"type":"tcmu","config":"/c","handler":"../../canary"}})"));
        CHECK(handler.result_int() == 400);
    }
    s.manager->wait_idle();
    CHECK(changes(before, tree(s.root())).empty());
    CHECK(s.platform.calls.size() == calls_before);
    require_alive(s);
}

TEST_CASE("hostile: a body over 64 KiB answers 413", "[hostile]") {
    HostileServer s;
    const std::string big(65 * 1024, ' ');
    SECTION("with Content-Length") {
        auto res = send_one(s, request("POST", "/sandboxes", "{\"template\":\"base\"}" + big));
        CHECK(res.result_int() == 413);
        CHECK(error_code(res) == "payload_too_large");
    }
    SECTION("announced by Content-Length only, body never sent") {
        auto res = send_one(
            s,
            "POST /sandboxes HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99999999999\r\n\r\n");
        CHECK(res.result_int() == 413);
    }
    SECTION("chunked") {
        std::string chunked =
            "POST /sandboxes HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        for (int i = 0; i < 70; ++i) {
            chunked += "400\r\n" + std::string(1024, ' ') + "\r\n";
        }
        chunked += "0\r\n\r\n";
        auto res = send_one(s, chunked);
        CHECK(res.result_int() == 413);
    }
    require_alive(s);
}

TEST_CASE("hostile: headers over 8 KiB answer 431", "[hostile]") {
    HostileServer s;
    SECTION("one long header") {
        auto res = send_one(s, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " +
                                   std::string(9000, 'x') + "\r\n\r\n");
        CHECK(res.result_int() == 431);
        CHECK(error_code(res) == "header_too_large");
    }
    SECTION("many short headers") {
        std::string req = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n";
        for (int i = 0; i < 1000; ++i) {
            req += "X-" + std::to_string(i) + ": y\r\n";
        }
        auto res = send_one(s, req + "\r\n");
        CHECK(res.result_int() == 431);
    }
    SECTION("a long request line") {
        auto res =
            send_one(s, "GET /" + std::string(9000, 'a') + " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        CHECK(res.result_int() == 431);
    }
    require_alive(s);
}

TEST_CASE("hostile: a client sending a byte per 200 ms is cut off after the read timeout",
          "[hostile]") {
    HostileServer s(1s);
    Client c(s.port());
    const std::string req = request("GET", "/healthz");
    const auto start = std::chrono::steady_clock::now();
    bool closed = false;
    std::size_t sent = 0;
    for (; sent < req.size() && !closed; ++sent) {
        if (!c.send(req.substr(sent, 1))) {
            closed = true;
            break;
        }
        closed = c.closed_by_server(200ms);
    }
    const auto elapsed = std::chrono::steady_clock::now() - start;
    INFO("sent " << sent << " of " << req.size() << " bytes in "
                 << std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count()
                 << " ms");
    CHECK(closed);
    CHECK(sent < req.size());
    CHECK(elapsed >= 900ms);
    CHECK(elapsed < 3s);
    require_alive(s);
}

TEST_CASE("hostile: invalid UTF-8 in JSON strings answers 400", "[hostile]") {
    HostileServer s;
    const std::vector<std::string> bodies = {
        "{\"id\":\"\xff\xfe\",\"template\":\"base\"}",
        "{\"id\":\"sb1\",\"template\":\"ba\xc3\"}",
        "{\"id\":\"\xed\xa0\x80\",\"template\":\"base\"}",  // a UTF-16 surrogate as UTF-8
        "{\"id\":\"\xc0\xaf\",\"template\":\"base\"}",      // overlong '/'
        "{\"\xff\":1}",                                     // in a key
        "{\"origin\":{\"type\":\"tcmu\",\"config\":\"/\x80\"}}",
        R"({"id":"\ud800","template":"base"})",  // a lone surrogate escape
    };
    for (const auto& body : bodies) {
        auto res = send_one(s, request("POST", "/sandboxes", body));
        INFO(body << " -> " << res.body());
        CHECK(res.result_int() == 400);
        CHECK(error_code(res) == "invalid_request");
    }
    CHECK(s.manager->list().empty());
}

TEST_CASE("hostile: JSON fields of the wrong type answer 400 naming the field", "[hostile]") {
    HostileServer s;
    const std::vector<std::pair<std::string, std::string>> cases = {
        {R"({"id":7,"template":"base"})", "'id'"},
        {R"({"id":true,"template":"base"})", "'id'"},
        {R"({"id":{"a":1},"template":"base"})", "'id'"},
        {R"({"template":[]})", "'template'"},
        {R"({"template":["base"]})", "'template'"},
        {R"({"template":1.5})", "'template'"},
        {R"({"origin":"x"})", "'origin'"},
        {R"({"origin":[1]})", "'origin'"},
        {R"({"origin":{"type":7,"config":"/c"}})", "'type'"},
        {R"({"origin":{"type":"tcmu","config":["/c"]}})", "'config'"},
        {R"({"origin":{"type":"tcmu","config":"/c","handler":false}})", "'handler'"},
        {R"({"origin":{"type":"tcmu","config":"/c","size_bytes":"1024"}})", "size_bytes"},
        {R"({"id":"sb1","template":"base","extra":1})", "'extra'"},
    };
    for (const auto& [body, field] : cases) {
        auto res = send_one(s, request("POST", "/sandboxes", body));
        INFO(body << " -> " << res.body());
        CHECK(res.result_int() == 400);
        CHECK_THAT(error_message(res), Catch::Contains(field));
    }
    SECTION("flatten") {
        auto res = send_one(s, request("POST", "/sandboxes/sb1/flatten", R"({"template":5})"));
        CHECK(res.result_int() == 400);
        CHECK_THAT(error_message(res), Catch::Contains("'template'"));
    }
    SECTION("the body is not an object") {
        for (const auto* body :
             {"[]", "\"x\"", "7", "null", "{", "{\"id\":\"a\"}{}", "\xef\xbb\xbf{}"}) {
            auto res = send_one(s, request("POST", "/sandboxes", body));
            INFO(body);
            CHECK(res.result_int() == 400);
        }
    }
    CHECK(s.manager->list().empty());
}

TEST_CASE("hostile: huge and negative numbers answer 400", "[hostile]") {
    HostileServer s;
    for (const auto* size :
         {"1e400", "-1e400", "18446744073709551616", "-1", "0", "-0", "1.5", "1e3",
          "99999999999999999999999999999999", "-9223372036854775809", "NaN", "Infinity"}) {
        const std::string body =
            std::string(R"({"id":"t1","origin":{"type":"tcmu","config":"/c","size_bytes":)") +
            size + "}}";
        auto res = send_one(s, request("POST", "/sandboxes", body));
        INFO(body << " -> " << res.body());
        CHECK(res.result_int() == 400);
        CHECK(error_code(res) == "invalid_request");
    }
    CHECK(s.manager->list().empty());
    SECTION("sizes near 2^64 would wrap the CoW size around") {
        for (const auto* size :
             {"18446744073709551615", "9223372036854775807", "4611686018427387905"}) {
            const std::string body =
                std::string(R"({"id":"t1","origin":{"type":"tcmu","config":"/c","size_bytes":)") +
                size + "}}";
            auto res = send_one(s, request("POST", "/sandboxes", body));
            INFO(body << " -> " << res.body());
            CHECK(res.result_int() == 400);
        }
    }
    SECTION("a large sane size is taken as given") {
        auto res = send_one(
            s,
            request(
                "POST", "/sandboxes",
                R"({"id":"t1","origin":{"type":"tcmu","config":"/c","size_bytes":1099511627776}})"));
        CHECK(res.result_int() == 201);
    }
}

TEST_CASE("hostile: pipelined requests are answered in order", "[hostile]") {
    HostileServer s;
    Client c(s.port());
    REQUIRE(c.send(request("GET", "/healthz") +
                   request("POST", "/sandboxes", create_body("\"sb1\"")) +
                   request("GET", "/sandboxes/sb1") + request("POST", "/sandboxes", "{") +
                   request("DELETE", "/sandboxes/sb1") + request("GET", "/sandboxes/sb1")));
    for (unsigned expected : {200u, 201u, 200u, 400u, 204u, 404u}) {
        auto res = c.read_response();
        REQUIRE(res.has_value());
        CHECK(res->result_int() == expected);
    }
}

TEST_CASE("hostile: a Transfer-Encoding not ending in chunked answers 400 and closes",
          "[hostile]") {
    HostileServer s;
    for (const auto* coding : {"gzip", "chunked, gzip", "identity", "chunked , x"}) {
        INFO(coding);
        Client c(s.port());
        // Read as no body, the body would be a second request: a GET that must never be answered.
        const std::string smuggled = request("GET", "/sandboxes");
        REQUIRE(c.send(std::string("POST /sandboxes HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                   "Content-Type: application/json\r\nTransfer-Encoding: ") +
                       coding + "\r\n\r\n" + smuggled));
        auto res = c.read_response();
        REQUIRE(res.has_value());
        CHECK(res->result_int() == 400);
        CHECK(res->body().find("bad_transfer_encoding") != std::string::npos);
        // No answer to the smuggled GET: the connection ends after the 400.
        CHECK_FALSE(c.read_response(3s).has_value());
        CHECK(c.closed_by_server(3s));
    }
    // Chunked last is the framing HTTP/1.1 defines, and still works.
    auto created = send_one(s,
                            "POST /sandboxes HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                            "13\r\n{\"template\":\"base\"}\r\n0\r\n\r\n");
    CHECK(created.result_int() == 201);
    CHECK(s.manager->list().size() == 1);
}

TEST_CASE("hostile: HTTP/1.0 is answered in 1.0 and closed", "[hostile]") {
    HostileServer s;
    Client c(s.port());
    REQUIRE(c.send("GET /healthz HTTP/1.0\r\n\r\n"));
    auto res = c.read_response();
    REQUIRE(res.has_value());
    CHECK(res->result_int() == 200);
    CHECK(res->version() == 10);
    CHECK(c.closed_by_server(3s));
    SECTION("a 1.0 POST with a body") {
        auto created =
            send_one(s, request("POST", "/sandboxes", create_body("\"sb1\""), "HTTP/1.0"));
        CHECK(created.result_int() == 201);
        CHECK(created.version() == 10);
    }
    SECTION("versions that do not exist") {
        for (const auto* version : {"HTTP/2.0", "HTTP/0.9", "HTTP/1.9", "HTTP/9.9", "HTTX/1.1"}) {
            Client v(s.port());
            REQUIRE(v.send(std::string("GET /healthz ") + version + "\r\nHost: 127.0.0.1\r\n\r\n"));
            auto r = v.read_response();
            INFO(version);
            // Beast reads any HTTP/d.d; what it reads is answered, what it does not is a 400.
            if (r) {
                CHECK((r->result_int() == 200 || r->result_int() == 400));
            }
        }
        require_alive(s);
    }
}

TEST_CASE("hostile: a request line with an absolute URI is routed by its path", "[hostile]") {
    HostileServer s;
    auto res = send_one(s, "GET http://localhost:7070/healthz HTTP/1.1\r\nHost: localhost\r\n\r\n");
    CHECK(res.result_int() == 200);
    auto created = send_one(
        s,
        "POST http://127.0.0.1/sandboxes?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\nContent-Length: 19\r\n\r\n{\"template\":\"base\"}");
    CHECK(created.result_int() == 201);
    auto missing =
        send_one(s, "GET https://evil.example/../../canary HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    CHECK(missing.result_int() == 404);
    auto asterisk = send_one(s, "OPTIONS * HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    CHECK(asterisk.result_int() == 404);
    auto authority = send_one(s, "CONNECT localhost:7070 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    CHECK((authority.result_int() == 400 || authority.result_int() == 404));
}

TEST_CASE("hostile: PATCH, TRACE, CONNECT and unknown methods answer 405 or 404", "[hostile]") {
    HostileServer s;
    for (const auto* method : {"PATCH", "TRACE", "CONNECT", "OPTIONS", "PUT", "BREW", "PROPFIND"}) {
        for (const auto* target : {"/healthz", "/sandboxes", "/sandboxes/sb1",
                                   "/sandboxes/sb1/pause", "/templates", "/metrics", "/nope"}) {
            auto res = send_one(s, request(method, target));
            INFO(method << " " << target << " -> " << res.body());
            CHECK((res.result_int() == 405 || res.result_int() == 404));
            if (res.result_int() == 405) {
                CHECK(!res[bhttp::field::allow].empty());
            }
        }
    }
    SECTION("a method Beast cannot read is a 400") {
        auto res = send_one(s, "G\x01T /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        CHECK(res.result_int() == 400);
    }
    require_alive(s);
}

TEST_CASE("hostile: 1000 connections opened and dropped leave the server answering", "[hostile]") {
    HostileServer s;
    for (int batch = 0; batch < 10; ++batch) {
        std::vector<std::unique_ptr<Client>> conns;
        for (int i = 0; i < 100; ++i) {
            conns.push_back(std::make_unique<Client>(s.port()));
            switch (i % 4) {
                case 0:
                    break;  // nothing at all
                case 1:
                    conns.back()->send("GET /sandb");
                    break;  // half a request line
                case 2:
                    conns.back()->send(request("POST", "/sandboxes", "{\"templ"));
                    break;
                case 3:
                    conns.back()->send(request("GET", "/healthz"));
                    break;  // never read
            }
        }
        for (std::size_t i = 0; i < conns.size(); ++i) {
            if (i % 2 == 0) {
                conns[i]->reset();
            }
        }
        conns.clear();
    }
    require_alive(s);
    // Every dropped connection is noticed and let go of, not kept until a timeout.
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (s.server->connections() > 0 && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(10ms);
    }
    CHECK(s.server->connections() == 0);
    CHECK(s.manager->list().empty());
}

TEST_CASE("hostile: bytes that are not UTF-8 in the target still get a valid JSON error body",
          "[hostile]") {
    HostileServer s;
    // Found by api_fuzz: the 404/405 message echoed the raw target into the JSON body.
    for (const auto* target : {"/\xd8\x97\x9a\x9e", "/sandboxes/sb1/\xff\xfe", "/\xc3\xa9"}) {
        for (const auto* method : {"GET", "PATCH"}) {
            auto res = send_one(s, request(method, target));
            INFO(method << " " << target << " -> " << res.body());
            CHECK((res.result_int() == 404 || res.result_int() == 400 || res.result_int() == 405));
            boost::system::error_code ec;
            (void)boost::json::parse(res.body(), ec);
            CHECK(!ec);
        }
    }
    auto pct = send_one(s, request("GET", "/\xff"));
    CHECK_THAT(error_message(pct), Catch::Contains("/%FF"));
}

TEST_CASE("hostile: what a web page can send is refused and creates nothing", "[hostile]") {
    HostileServer s;
    const auto before = tree(s.root());
    const auto calls_before = s.platform.calls.size();
    const std::string body = create_body("\"web1\"");
    const std::string len = "Content-Length: " + std::to_string(body.size()) + "\r\n";
    SECTION("a cross-origin simple POST: text/plain, no preflight, with Origin") {
        for (const auto* type : {"text/plain", "application/x-www-form-urlencoded",
                                 "multipart/form-data; boundary=b"}) {
            auto res = send_one(s,
                                "POST /sandboxes HTTP/1.1\r\nHost: 127.0.0.1:7070\r\n"
                                "Origin: https://evil.example\r\nContent-Type: " +
                                    std::string(type) + "\r\n" + len + "\r\n" + body);
            CHECK(res.result_int() == 403);
            CHECK(error_code(res) == "origin_refused");
        }
        // pause, resume, flatten and DELETE the same way.
        for (const auto* target : {"/sandboxes/sb1/pause", "/sandboxes/sb1/flatten"}) {
            auto res = send_one(s, std::string("POST ") + target +
                                       " HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: null\r\n"
                                       "Content-Type: text/plain\r\nContent-Length: 0\r\n\r\n");
            CHECK(res.result_int() == 403);
        }
    }
    SECTION("a text/plain body without Origin (a client that strips it) is 415") {
        auto res = send_one(s,
                            "POST /sandboxes HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            "Content-Type: text/plain;charset=UTF-8\r\n" +
                                len + "\r\n" + body);
        CHECK(res.result_int() == 415);
        CHECK(error_code(res) == "unsupported_media_type");
        auto none =
            send_one(s, "POST /sandboxes HTTP/1.1\r\nHost: 127.0.0.1\r\n" + len + "\r\n" + body);
        CHECK(none.result_int() == 415);
    }
    SECTION("a DNS-rebinding page: its own host name in Host, no token") {
        for (const auto* host : {"evil.example", "evil.example:7070", "127.0.0.1.nip.io"}) {
            auto res =
                send_one(s, "POST /sandboxes HTTP/1.1\r\nHost: " + std::string(host) +
                                "\r\nContent-Type: application/json\r\n" + len + "\r\n" + body);
            CHECK(res.result_int() == 403);
            CHECK(error_code(res) == "host_refused");
            auto del = send_one(
                s, "DELETE /sandboxes/sb1 HTTP/1.1\r\nHost: " + std::string(host) + "\r\n\r\n");
            CHECK(del.result_int() == 403);
        }
    }
    s.manager->wait_idle();
    CHECK(s.manager->list().empty());
    CHECK(s.platform.calls.size() == calls_before);
    CHECK(changes(before, tree(s.root())).empty());
    // The same create from a program is taken.
    auto ok = send_one(s, request("POST", "/sandboxes", body));
    CHECK(ok.result_int() == 201);
}

TEST_CASE("hostile: an explicit empty id is a 400, not a request for a generated one",
          "[hostile]") {
    HostileServer s;
    auto res = send_one(s, request("POST", "/sandboxes", create_body("\"\"")));
    CHECK(res.result_int() == 400);
    CHECK_THAT(error_message(res), Catch::Contains("'id'"));
    CHECK(s.manager->list().empty());
    auto absent = send_one(s, request("POST", "/sandboxes", "{\"template\":\"base\"}"));
    CHECK(absent.result_int() == 201);
}

TEST_CASE("hostile: 2000 idle connections neither exhaust fds nor lock out the unix socket",
          "[hostile]") {
    // 2,000 client sockets here plus what the server holds: make room under the hard limit.
    rlimit lim{};
    REQUIRE(::getrlimit(RLIMIT_NOFILE, &lim) == 0);
    const rlim_t saved = lim.rlim_cur;
    const rlim_t needed = 2000 + 256 + 512;
    if (lim.rlim_cur < needed) {
        REQUIRE(lim.rlim_max >= needed);  // else the test cannot be sized; the host is too small
        lim.rlim_cur = needed;
        REQUIRE(::setrlimit(RLIMIT_NOFILE, &lim) == 0);
    }
    {
        HostileServer s(30s);
        std::vector<std::unique_ptr<Client>> idle;
        for (int i = 0; i < 2000; ++i) {
            idle.push_back(std::make_unique<Client>(s.port()));
            if (i % 3 == 1) {
                idle.back()->send("GET /sandb");  // half a request line
            }
        }
        // The listener holds its cap; the rest were accepted and closed at once.
        const auto deadline = std::chrono::steady_clock::now() + 10s;
        while (s.server->connections_refused() < 2000 - 256 &&
               std::chrono::steady_clock::now() < deadline) {
            std::this_thread::sleep_for(10ms);
        }
        CHECK(s.server->connections_refused() == 2000 - 256);
        CHECK(s.server->connections() == 256);
        // A new connection on the other listener is answered, and the agent still creates.
        Client u(s.socket_path());
        const std::string body = create_body("\"after-flood\"");
        REQUIRE(
            u.send("POST /sandboxes HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
                   "application/json\r\nContent-Length: " +
                   std::to_string(body.size()) + "\r\n\r\n" + body));
        auto created = u.read_response();
        REQUIRE(created.has_value());
        CHECK(created->result_int() == 201);
        REQUIRE(u.send("GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n"));
        auto metrics = u.read_response();
        REQUIRE(metrics.has_value());
        CHECK_THAT(metrics->body(), Catch::Contains("wrenn_connections_refused_total 1744") &&
                                        Catch::Contains("wrenn_connections_open 257"));
        // The agent's own files still open: the template and state dir are read by a create.
        CHECK(s.manager->list().size() == 1);
        idle.clear();
    }
    lim.rlim_cur = saved;
    ::setrlimit(RLIMIT_NOFILE, &lim);
}

TEST_CASE("hostile: an archive upload cut anywhere leaves nothing; whole, it imports",
          "[hostile][transfer]") {
    HostileServer hs;
    auto call = [&](const std::string& request) {
        Client c(hs.port());
        REQUIRE(c.send(request));
        auto res = c.read_response();
        REQUIRE(res);
        return *res;
    };
    auto json_post = [](const std::string& target, const std::string& body) {
        return "POST " + target +
               " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               "Content-Length: " +
               std::to_string(body.size()) + "\r\n\r\n" + body;
    };
    auto archive_post = [](const std::string& target, std::string_view body,
                           std::string_view type = "application/vnd.wrenn.sandbox") {
        return "POST " + target +
               " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " + std::string(type) +
               "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" +
               std::string(body);
    };
    REQUIRE(call(json_post("/sandboxes", R"({"id":"sb1","template":"base"})")).result_int() == 201);
    REQUIRE(call(json_post("/sandboxes/sb1/pause", "")).result_int() == 200);
    auto exported = call("GET /sandboxes/sb1/export HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    REQUIRE(exported.result_int() == 200);
    CHECK(exported.chunked());
    CHECK(exported[bhttp::field::content_type] == "application/vnd.wrenn.sandbox");
    const std::string archive = exported.body();
    REQUIRE(archive.size() > 72);

    const fs::path sandboxes = hs.root() / "agent" / "state" / "sandboxes";
    auto settled = [&] {
        for (int i = 0; i < 500 && hs.manager->in_flight() > 0; ++i) {
            std::this_thread::sleep_for(5ms);
        }
    };
    for (std::size_t cut : {std::size_t{0}, std::size_t{10}, std::size_t{72}, archive.size() / 2,
                            archive.size() - 1}) {
        CAPTURE(cut);
        const std::string request = archive_post("/sandboxes/import?id=sb2", archive);
        Client c(hs.port());
        REQUIRE(c.send(request.substr(0, request.size() - archive.size() + cut)));
        std::this_thread::sleep_for(20ms);
        c.reset();
        settled();
        CHECK_FALSE(fs::exists(sandboxes / "sb2"));
        CHECK_FALSE(hs.manager->get("sb2"));
    }
    // The JSON routes refuse the archive type; the import route refuses JSON.
    CHECK(call(archive_post("/sandboxes", archive)).result_int() == 415);
    CHECK(call(archive_post("/sandboxes/import?id=sb2", "{}", "application/json")).result_int() ==
          415);
    CHECK_FALSE(fs::exists(sandboxes / "sb2"));

    auto imported = call(archive_post("/sandboxes/import?id=sb2", archive));
    INFO(imported.body());
    REQUIRE(imported.result_int() == 201);
    CHECK(imported.body().find("\"state\":\"paused\"") != std::string::npos);
    // Chunked, as curl -T - sends it.
    std::string chunked =
        "POST /sandboxes/import?id=sb3 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
        "application/vnd.wrenn.sandbox\r\nTransfer-Encoding: chunked\r\n\r\n";
    char size[16];
    std::snprintf(size, sizeof size, "%zx", archive.size());
    chunked += std::string(size) + "\r\n" + archive + "\r\n0\r\n\r\n";
    CHECK(call(chunked).result_int() == 201);
    auto again = call(archive_post("/sandboxes/import?id=sb3", archive));
    CHECK(again.result_int() == 409);
    CHECK(again.body().find("already_exists") != std::string::npos);
}
