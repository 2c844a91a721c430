// The HTTP transport over real sockets: 127.0.0.1 with port 0, and unix sockets in a temp dir.
#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/beast/http/parser.hpp>
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <thread>

#include "common/unique_fd.hpp"
#include "http/server.hpp"
#include "http/socket_dir.hpp"
#include "http_test_client.hpp"

namespace bhttp = boost::beast::http;
namespace net = boost::asio;
using namespace std::chrono_literals;
using wrenn::UniqueFd;
using wrenn::http::Handler;
using wrenn::http::ListenAddress;
using wrenn::http::Request;
using wrenn::http::Respond;
using wrenn::http::Response;
using wrenn::http::Server;
using wrenn::http::ServerOptions;
using wrenn::http::testing::Client;
using wrenn::http::testing::IoThreads;

namespace {

ListenAddress loopback_any_port() {
    ListenAddress a;
    a.kind = ListenAddress::Kind::Tcp;
    a.host = "127.0.0.1";
    a.port = 0;
    return a;
}

ListenAddress unix_address(const std::string& path) {
    ListenAddress a;
    a.kind = ListenAddress::Kind::Unix;
    a.path = path;
    return a;
}

Response text_response(const Request& req, std::string body) {
    Response res{bhttp::status::ok, req.version()};
    res.set(bhttp::field::content_type, "text/plain");
    res.body() = std::move(body);
    return res;
}

// Answers "<METHOD> <target> <body>" at once.
void echo(Request&& req, Respond respond) {
    std::string body = std::string(req.method_string()) + " " + std::string(req.target());
    if (!req.body().empty()) {
        body += " " + req.body();
    }
    respond(text_response(req, std::move(body)));
}

// A temp directory removed with its contents at scope exit.
struct TempDir {
    std::filesystem::path path;
    TempDir() {
        std::string tmpl = (std::filesystem::temp_directory_path() / "wrenn-http-XXXXXX").string();
        REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
        path = tmpl;
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
};

// Threads that the test's handlers start to answer later; joined before the server goes.
struct Workers {
    std::mutex mutex;
    std::vector<std::thread> threads;
    void spawn(std::function<void()> f) {
        std::lock_guard lock(mutex);
        threads.emplace_back(std::move(f));
    }
    void join() {
        std::vector<std::thread> all;
        {
            std::lock_guard lock(mutex);
            all.swap(threads);
        }
        for (auto& t : all) {
            t.join();
        }
    }
    ~Workers() { join(); }
};

// A server running on two io_context threads, as the agent may run it.
struct TestServer {
    IoThreads io;
    std::unique_ptr<Server> server;

    TestServer(ServerOptions opts, Handler handler) : saved_level(spdlog::get_level()) {
        // The failure tests provoke hundreds of warnings by design.
        spdlog::set_level(spdlog::level::err);
        if (opts.listen.empty()) {
            opts.listen.push_back(loopback_any_port());
        }
        auto created = Server::create(io.ioc, std::move(opts), std::move(handler));
        if (!created.ok()) {
            FAIL("create: " << created.error().message());
        }
        server = std::move(*created);
        io.start();
    }
    ~TestServer() {
        shutdown();
        spdlog::set_level(saved_level);
    }
    spdlog::level::level_enum saved_level;

    void shutdown() {
        server.reset();
        io.stop();
    }

    std::uint16_t port() const { return server->bound().at(0).port; }

    // Waits until the server has this many live connections.
    bool wait_connections(std::size_t n, std::chrono::milliseconds timeout = 5s) const {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (server->connections() != n) {
            if (std::chrono::steady_clock::now() > deadline) {
                return false;
            }
            std::this_thread::sleep_for(2ms);
        }
        return true;
    }
};

std::string get(std::string_view target, std::string_view extra_headers = "") {
    return "GET " + std::string(target) + " HTTP/1.1\r\nHost: 127.0.0.1\r\n" +
           std::string(extra_headers) + "\r\n";
}

std::string post(std::string_view target, std::string_view body) {
    return "POST " + std::string(target) +
           " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: " +
           std::to_string(body.size()) + "\r\n\r\n" + std::string(body);
}

void check_json_error(const Response& res, bhttp::status status, std::string_view code) {
    CHECK(res.result() == status);
    CHECK(res[bhttp::field::content_type] == "application/json");
    CHECK_THAT(res.body(), Catch::Contains("{\"error\":{\"code\":\"" + std::string(code) + "\""));
}

}  // namespace

TEST_CASE("http server: GET returns the handler's body", "[http]") {
    TestServer ts({}, echo);
    Client c(ts.port());
    REQUIRE(c.send(get("/v1/sandboxes?x=1")));
    auto res = c.read_response();
    REQUIRE(res);
    CHECK(res->result() == bhttp::status::ok);
    CHECK(res->body() == "GET /v1/sandboxes?x=1");
    CHECK(res->at(bhttp::field::content_length) == "21");
    CHECK(res->keep_alive());
    CHECK(ts.server->connections() == 1);
}

TEST_CASE("http server: keep-alive serves two requests on one connection", "[http]") {
    TestServer ts({}, echo);
    Client c(ts.port());
    REQUIRE(c.send(get("/one")));
    auto first = c.read_response();
    REQUIRE(first);
    CHECK(first->body() == "GET /one");
    REQUIRE(c.send(post("/two", "hello")));
    auto second = c.read_response();
    REQUIRE(second);
    CHECK(second->body() == "POST /two hello");
    // Pipelined: both requests in one write, answered in order.
    REQUIRE(c.send(get("/three") + get("/four", "Connection: close\r\n")));
    auto third = c.read_response();
    auto fourth = c.read_response();
    REQUIRE(third);
    REQUIRE(fourth);
    CHECK(third->body() == "GET /three");
    CHECK(fourth->body() == "GET /four");
    CHECK_FALSE(fourth->keep_alive());
    CHECK(c.closed_by_server());
    c.close();  // else the server lingers, waiting for our FIN, for up to 2 s
    CHECK(ts.wait_connections(0));
}

TEST_CASE("http server: a handler may respond later from another thread", "[http]") {
    Workers workers;
    TestServer ts({}, [&](Request&& req, Respond respond) {
        workers.spawn([req = std::move(req), respond] {
            std::this_thread::sleep_for(200ms);
            respond(text_response(req, "late"));
            respond(text_response(req, "twice"));  // a second call is dropped
        });
    });
    Client c(ts.port());
    const auto start = std::chrono::steady_clock::now();
    REQUIRE(c.send(get("/slow")));
    auto res = c.read_response();
    REQUIRE(res);
    CHECK(res->body() == "late");
    CHECK(std::chrono::steady_clock::now() - start >= 190ms);
    // The connection is still usable after the dropped second response.
    REQUIRE(c.send(get("/again")));
    auto again = c.read_response();
    REQUIRE(again);
    CHECK(again->body() == "late");
    workers.join();
}

TEST_CASE("http server: a body over the limit gets 413 and the connection closes", "[http]") {
    TestServer ts({}, echo);
    Client c(ts.port());
    c.send(post("/big", std::string(64 * 1024 + 1, 'x')));  // the server may close mid-way
    auto res = c.read_response();
    REQUIRE(res);
    check_json_error(*res, bhttp::status::payload_too_large, "payload_too_large");
    CHECK_FALSE(res->keep_alive());
    CHECK(c.closed_by_server());

    // Exactly at the limit is fine.
    Client ok(ts.port());
    REQUIRE(ok.send(post("/big", std::string(64 * 1024, 'x'))));
    auto fine = ok.read_response();
    REQUIRE(fine);
    CHECK(fine->result() == bhttp::status::ok);

    // A chunked body over the limit is refused too.
    Client chunked(ts.port());
    std::string req =
        "POST /c HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n";
    for (int i = 0; i < 3; ++i) {
        req += "8000\r\n" + std::string(0x8000, 'y') + "\r\n";
    }
    req += "0\r\n\r\n";
    chunked.send(req);
    auto refused = chunked.read_response();
    REQUIRE(refused);
    check_json_error(*refused, bhttp::status::payload_too_large, "payload_too_large");
}

TEST_CASE("http server: a header over the limit gets 431", "[http]") {
    TestServer ts({}, echo);
    Client c(ts.port());
    c.send(get("/", "X-Big: " + std::string(9000, 'h') + "\r\n"));
    auto res = c.read_response();
    REQUIRE(res);
    check_json_error(*res, bhttp::status::request_header_fields_too_large, "header_too_large");
    CHECK_FALSE(res->keep_alive());
    CHECK(c.closed_by_server());
}

TEST_CASE("http server: malformed requests get 400 and the connection closes", "[http]") {
    TestServer ts({}, echo);
    for (const char* garbage :
         {"GARBAGE\r\n\r\n", "GET / HTTP/9.9\r\n\r\n", "\x01\x02\x03 / x\r\n\r\n",
          "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: nope\r\n\r\n",
          "GET / HTTP/1.1\r\nBad Header\r\n\r\n"}) {
        INFO("request: " << garbage);
        Client c(ts.port());
        REQUIRE(c.send(garbage));
        auto res = c.read_response();
        REQUIRE(res);
        check_json_error(*res, bhttp::status::bad_request, "bad_request");
        CHECK((*res)[bhttp::field::connection] == "close");
        CHECK(c.closed_by_server());
    }
    CHECK(ts.wait_connections(0));
}

TEST_CASE("http server: a slow client is cut off after read_timeout", "[http]") {
    ServerOptions opts;
    opts.read_timeout = 1s;
    opts.idle_timeout = 10s;
    TestServer ts(opts, echo);

    SECTION("half a request, then silence") {
        Client c(ts.port());
        const auto start = std::chrono::steady_clock::now();
        REQUIRE(c.send("GET /half HTTP/1.1\r\nHost: te"));
        CHECK(c.closed_by_server(5s));
        const auto took = std::chrono::steady_clock::now() - start;
        CHECK(took >= 900ms);
        CHECK(took < 3s);
    }
    SECTION("a trickle of bytes does not extend the deadline") {
        Client c(ts.port());
        const auto start = std::chrono::steady_clock::now();
        const std::string req = get("/trickle");
        bool closed = false;
        for (char ch : req.substr(0, req.size() - 1)) {
            if (!c.send(std::string_view(&ch, 1))) {
                closed = true;
                break;
            }
            std::this_thread::sleep_for(100ms);
            if (std::chrono::steady_clock::now() - start > 2500ms) {
                break;
            }
        }
        CHECK((closed || c.closed_by_server(2s)));
        CHECK(std::chrono::steady_clock::now() - start < 4s);
    }
    SECTION("connecting and sending nothing") {
        Client c(ts.port());
        CHECK(c.closed_by_server(5s));
    }
    CHECK(ts.wait_connections(0));
}

TEST_CASE("http server: bearer token", "[http]") {
    ServerOptions opts;
    // emplace, not "=": GCC 12 misreads operator= on an empty optional<string> as reading an
    // uninitialized string (-Wmaybe-uninitialized) once ServerOptions grew.
    opts.bearer_token.emplace("s3cret-token");
    TestServer ts(std::move(opts), echo);
    Client c(ts.port());

    REQUIRE(c.send(get("/v1/sandboxes")));
    auto missing = c.read_response();
    REQUIRE(missing);
    check_json_error(*missing, bhttp::status::unauthorized, "unauthorized");
    CHECK((*missing)[bhttp::field::www_authenticate] == "Bearer");
    CHECK(missing->keep_alive());

    for (const char* wrong : {"Bearer s3cret-tokeN", "Bearer s3cret-token-longer", "Bearer s3cret",
                              "Bearer ", "Basic s3cret-token", "s3cret-token"}) {
        INFO("Authorization: " << wrong);
        REQUIRE(c.send(get("/v1/sandboxes", std::string("Authorization: ") + wrong + "\r\n")));
        auto res = c.read_response();
        REQUIRE(res);
        check_json_error(*res, bhttp::status::unauthorized, "unauthorized");
    }

    REQUIRE(c.send(get("/v1/sandboxes", "Authorization: Bearer s3cret-token\r\n")));
    auto right = c.read_response();
    REQUIRE(right);
    CHECK(right->result() == bhttp::status::ok);
    CHECK(right->body() == "GET /v1/sandboxes");

    REQUIRE(c.send(get("/v1/sandboxes", "Authorization: bearer s3cret-token\r\n")));
    auto lower = c.read_response();
    REQUIRE(lower);
    CHECK(lower->result() == bhttp::status::ok);

    REQUIRE(c.send(get("/healthz")));
    auto health = c.read_response();
    REQUIRE(health);
    CHECK(health->result() == bhttp::status::ok);

    REQUIRE(c.send(post("/healthz", "")));
    auto post_health = c.read_response();
    REQUIRE(post_health);
    CHECK(post_health->result() == bhttp::status::unauthorized);
}

TEST_CASE("http server: unix socket is 0600, replaces a stale file, and is removed", "[http]") {
    TempDir dir;
    const std::string path = (dir.path / "agent.sock").string();

    // A stale socket file, as a crashed agent leaves it: bound, then closed without unlink.
    {
        UniqueFd stale(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        path.copy(addr.sun_path, sizeof addr.sun_path - 1);
        REQUIRE(::bind(stale.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    }
    REQUIRE(std::filesystem::is_socket(path));

    ServerOptions opts;
    opts.listen = {unix_address(path), loopback_any_port()};
    opts.unix_socket_group = "";  // no group: 0600 even where a group "wrenn" exists
    {
        TestServer ts(opts, echo);
        struct stat st {};
        REQUIRE(::stat(path.c_str(), &st) == 0);
        CHECK(S_ISSOCK(st.st_mode));
        CHECK((st.st_mode & 07777) == 0600);
        REQUIRE(ts.server->bound().size() == 2);
        CHECK(ts.server->bound()[0].to_string() == "unix:" + path);
        CHECK(ts.server->bound()[1].port != 0);

        Client c(path);
        REQUIRE(c.send(get("/over-unix")));
        auto res = c.read_response();
        REQUIRE(res);
        CHECK(res->body() == "GET /over-unix");

        // A second server on the same live socket is refused and leaves the file alone.
        net::io_context other;
        ServerOptions same;
        same.listen = {unix_address(path)};
        auto second = Server::create(other, same, echo);
        REQUIRE_FALSE(second.ok());
        CHECK(second.error().code() == EADDRINUSE);
        CHECK(std::filesystem::is_socket(path));
        Client still(path);
        REQUIRE(still.send(get("/still")));
        CHECK(still.read_response());
    }
    CHECK_FALSE(std::filesystem::exists(path));
}

TEST_CASE("http server: a path that is not a socket is never replaced", "[http]") {
    TempDir dir;
    const std::string path = (dir.path / "not-a-socket").string();
    { UniqueFd f(::open(path.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644)); }
    net::io_context ioc;
    ServerOptions opts;
    opts.listen = {unix_address(path)};
    auto server = Server::create(ioc, opts, echo);
    REQUIRE_FALSE(server.ok());
    CHECK(server.error().code() == EEXIST);
    CHECK_THAT(server.error().message(), Catch::StartsWith("listen unix:" + path));
    CHECK(std::filesystem::is_regular_file(path));
}

TEST_CASE("http server: bind errors name the address; nothing half-made stays", "[http]") {
    TestServer ts({}, echo);
    TempDir dir;
    const std::string path = (dir.path / "x.sock").string();
    net::io_context ioc;
    ServerOptions opts;
    ListenAddress taken = loopback_any_port();
    taken.port = ts.port();
    opts.listen = {unix_address(path), taken};
    auto server = Server::create(ioc, opts, echo);
    REQUIRE_FALSE(server.ok());
    CHECK(server.error().code() == EADDRINUSE);
    CHECK(server.error().message() ==
          "listen 127.0.0.1:" + std::to_string(ts.port()) + ": address already in use");
    // The unix listener opened before the failure is gone again, file and all.
    CHECK_FALSE(std::filesystem::exists(path));

    ServerOptions none;
    CHECK_FALSE(Server::create(ioc, none, echo).ok());
}

TEST_CASE("http server: stop_accepting refuses new connections and finishes work", "[http]") {
    Workers workers;
    std::atomic<int> slow_started{0};
    TestServer ts({}, [&](Request&& req, Respond respond) {
        if (req.target() == "/slow") {
            slow_started = 1;
            workers.spawn([req = std::move(req), respond] {
                std::this_thread::sleep_for(300ms);
                respond(text_response(req, "slow done"));
            });
            return;
        }
        echo(std::move(req), std::move(respond));
    });
    const auto port = ts.port();

    Client idle(port);  // served once, then idle between requests
    REQUIRE(idle.send(get("/first")));
    REQUIRE(idle.read_response());

    Client busy(port);
    REQUIRE(busy.send(get("/slow")));
    while (slow_started == 0) {
        std::this_thread::sleep_for(1ms);
    }
    ts.server->stop_accepting();
    ts.server->stop_accepting();  // idempotent

    UniqueFd refused;
    CHECK(Client::connect_tcp(port, refused) == ECONNREFUSED);

    CHECK(idle.closed_by_server(2s));
    auto res = busy.read_response();
    REQUIRE(res);
    CHECK(res->body() == "slow done");
    CHECK_FALSE(res->keep_alive());
    CHECK(busy.closed_by_server(2s));
    busy.close();
    idle.close();
    CHECK(ts.wait_connections(0));
    workers.join();
}

TEST_CASE("http server: a client gone before the response is no problem", "[http]") {
    Workers workers;
    std::atomic<int> responded{0};
    TestServer ts({}, [&](Request&& req, Respond respond) {
        workers.spawn([&responded, req = std::move(req), respond] {
            std::this_thread::sleep_for(100ms);
            respond(text_response(req, "nobody listens"));
            ++responded;
        });
    });
    {
        Client gone(ts.port());
        REQUIRE(gone.send(get("/a")));
        std::this_thread::sleep_for(20ms);
        gone.close();
    }
    {
        Client reset(ts.port());
        REQUIRE(reset.send(get("/b")));
        std::this_thread::sleep_for(20ms);
        reset.reset();
    }
    while (responded < 2) {
        std::this_thread::sleep_for(5ms);
    }
    CHECK(ts.wait_connections(0));
    Client next(ts.port());
    REQUIRE(next.send(get("/c")));
    auto res = next.read_response();
    REQUIRE(res);
    CHECK(res->body() == "nobody listens");
    workers.join();
}

TEST_CASE("http server: a handler that never responds cannot hold the connection", "[http]") {
    std::mutex mutex;
    std::vector<Respond> kept;
    ServerOptions opts;
    opts.handler_timeout = 1s;
    TestServer ts(opts, [&](Request&&, Respond respond) {
        std::lock_guard lock(mutex);
        kept.push_back(std::move(respond));
    });
    Client c(ts.port());
    REQUIRE(c.send(get("/forever")));
    CHECK(c.closed_by_server(4s));
    CHECK(ts.wait_connections(0));
    // Answering after the session is gone is dropped quietly.
    std::lock_guard lock(mutex);
    REQUIRE(kept.size() == 1);
    kept[0](Response{bhttp::status::ok, 11});
    kept.clear();  // a Respond must not outlive the io_context (it holds the strand)
}

TEST_CASE("http server: Expect: 100-continue invites the body, unless unauthorized", "[http]") {
    ServerOptions opts;
    opts.bearer_token.emplace("tok");
    TestServer ts(std::move(opts), echo);
    const std::string head =
        "POST /v1/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Content-Length: 5\r\nExpect: 100-continue\r\n";

    Client c(ts.port());
    REQUIRE(c.send(head + "Authorization: Bearer tok\r\n\r\n"));
    auto interim = c.read_response();
    REQUIRE(interim);
    CHECK(interim->result() == bhttp::status::continue_);
    REQUIRE(c.send("hello"));
    auto res = c.read_response();
    REQUIRE(res);
    CHECK(res->body() == "POST /v1/x hello");

    Client denied(ts.port());
    REQUIRE(denied.send(head + "\r\n"));
    auto refused = denied.read_response();
    REQUIRE(refused);
    check_json_error(*refused, bhttp::status::unauthorized, "unauthorized");
    CHECK_FALSE(refused->keep_alive());
    CHECK(denied.closed_by_server());
}

TEST_CASE("http server: a handler that throws gets a 500", "[http]") {
    TestServer ts({}, [](Request&&, Respond) { throw std::runtime_error("boom"); });
    Client c(ts.port());
    REQUIRE(c.send(get("/throw")));
    auto res = c.read_response();
    REQUIRE(res);
    check_json_error(*res, bhttp::status::internal_server_error, "internal_error");
}

TEST_CASE("http server: a cut at every byte of a request leaves the server serving", "[http]") {
    ServerOptions opts;
    opts.read_timeout = 2s;
    TestServer ts(opts, echo);
    const std::string request = post("/v1/sandboxes", "{\"id\":\"sb1\"}");
    for (std::size_t cut = 0; cut <= request.size(); ++cut) {
        INFO("cut after " << cut << " bytes");
        {
            Client c(ts.port());
            REQUIRE(c.send(std::string_view(request).substr(0, cut)));
            if (cut % 2 == 0) {
                c.close();
            } else {
                c.reset();
            }
        }
        {
            // A byte replaced by NUL at the same offset: an answer or a close, never a crash.
            std::string broken = request;
            if (cut < broken.size()) {
                broken[cut] = '\0';
            }
            Client c(ts.port());
            c.send(broken);
            auto res = c.read_response(3s);
            if (res) {
                CHECK((res->result() == bhttp::status::ok ||
                       res->result() == bhttp::status::bad_request));
            }
        }
        Client next(ts.port());
        REQUIRE(next.send(request));
        auto res = next.read_response();
        REQUIRE(res);
        CHECK(res->body() == "POST /v1/sandboxes {\"id\":\"sb1\"}");
    }
    CHECK(ts.wait_connections(0));
}

// ---------------------------------------------------------------------------------------------
// Request hygiene: what a browser, a DNS-rebinding page or a careless client sends is refused.

namespace {

std::string raw(std::string_view method, std::string_view headers, std::string_view body = {}) {
    std::string out = std::string(method) + " /x HTTP/1.1\r\n" + std::string(headers);
    if (!body.empty()) {
        out += "Content-Length: " + std::to_string(body.size()) + "\r\n";
    }
    return out + "\r\n" + std::string(body);
}

Response one(const TestServer& ts, const std::string& bytes) {
    Client c(ts.port());
    REQUIRE(c.send(bytes));
    auto res = c.read_response();
    INFO("request: " << bytes);
    REQUIRE(res);
    return std::move(*res);
}

}  // namespace

TEST_CASE("http server: a body must be Content-Type: application/json, else 415", "[http]") {
    TestServer ts({}, echo);
    const std::string host = "Host: 127.0.0.1\r\n";
    for (const auto* type :
         {"text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
          "application/jsonp", "application/json-seq", "json", ""}) {
        INFO("Content-Type: " << type);
        auto res = one(ts, raw("POST", host + "Content-Type: " + type + "\r\n", "{\"id\":\"a\"}"));
        check_json_error(res, bhttp::status::unsupported_media_type, "unsupported_media_type");
        CHECK_THAT(res.body(), Catch::Contains("application/json"));
    }
    // A body with no Content-Type at all.
    auto none = one(ts, raw("POST", host, "{}"));
    check_json_error(none, bhttp::status::unsupported_media_type, "unsupported_media_type");
    CHECK_THAT(none.body(), Catch::Contains("no Content-Type"));
    // A text/plain form with no fields has an empty body; it is still refused.
    auto empty = one(ts, raw("POST", host + "Content-Type: text/plain\r\nContent-Length: 0\r\n"));
    check_json_error(empty, bhttp::status::unsupported_media_type, "unsupported_media_type");
    // What a JSON client sends passes, with parameters and in any case.
    for (const auto* type : {"application/json", "application/json; charset=utf-8",
                             "Application/JSON;charset=UTF-8", " application/json "}) {
        INFO("Content-Type: " << type);
        auto res = one(ts, raw("POST", host + "Content-Type: " + type + "\r\n", "{}"));
        CHECK(res.result() == bhttp::status::ok);
        CHECK(res.body() == "POST /x {}");
    }
    // No body and no Content-Type: a plain POST (pause) or GET passes.
    CHECK(one(ts, raw("POST", host)).result() == bhttp::status::ok);
    CHECK(one(ts, raw("GET", host)).result() == bhttp::status::ok);
    // The 415 keeps the connection: the body was read.
    Client c(ts.port());
    REQUIRE(c.send(raw("POST", host + "Content-Type: text/plain\r\n", "x")));
    auto refused = c.read_response();
    REQUIRE(refused);
    CHECK(refused->result() == bhttp::status::unsupported_media_type);
    REQUIRE(c.send(get("/after")));
    auto after = c.read_response();
    REQUIRE(after);
    CHECK(after->body() == "GET /after");
}

TEST_CASE("http server: a text/plain body with Expect: 100-continue is refused before the body",
          "[http]") {
    TestServer ts({}, echo);
    Client c(ts.port());
    REQUIRE(
        c.send("POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
               "Content-Length: 5\r\nExpect: 100-continue\r\n\r\n"));
    auto res = c.read_response();
    REQUIRE(res);
    check_json_error(*res, bhttp::status::unsupported_media_type, "unsupported_media_type");
}

TEST_CASE("http server: any request with an Origin header is refused 403", "[http]") {
    std::atomic<int> handled{0};
    TestServer ts({}, [&](Request&& req, Respond respond) {
        ++handled;
        echo(std::move(req), std::move(respond));
    });
    // What a web page's fetch() or form sends: the "simple" cross-origin POSTs that need no
    // preflight, and the same-origin ones of a DNS-rebinding page.
    for (const auto* request : {
             "POST /sandboxes HTTP/1.1\r\nHost: 127.0.0.1:7070\r\nOrigin: http://evil.example\r\n"
             "Content-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}",
             "POST /sandboxes HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: null\r\n"
             "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
             "DELETE /sandboxes/sb1 HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: "
             "http://127.0.0.1\r\n\r\n",
             "GET /sandboxes HTTP/1.1\r\nHost: 127.0.0.1\r\norigin: http://a\r\n\r\n",
         }) {
        INFO(request);
        auto res = one(ts, request);
        check_json_error(res, bhttp::status::forbidden, "origin_refused");
    }
    CHECK(handled == 0);
    // Even with the right token: a browser must not carry it across origins.
    ServerOptions with_token;
    with_token.bearer_token = "0123456789abcdef";
    TestServer tok(std::move(with_token), echo);
    auto res = one(tok,
                   "GET /x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer 0123456789abcdef\r\n"
                   "Origin: http://a\r\n\r\n");
    check_json_error(res, bhttp::status::forbidden, "origin_refused");
}

TEST_CASE("http server: without a token, a TCP listener takes only a loopback or own Host",
          "[http]") {
    TestServer ts({}, echo);
    const std::string port = std::to_string(ts.port());
    for (const std::string& host :
         std::vector<std::string>{"127.0.0.1", "127.0.0.1:" + port, "localhost",
                                  "LOCALHOST:" + port, "127.1.2.3:80", "[::1]", "[::1]:" + port}) {
        INFO("Host: " << host);
        auto res = one(ts, "GET /ok HTTP/1.1\r\nHost: " + host + "\r\n\r\n");
        CHECK(res.result() == bhttp::status::ok);
    }
    for (const std::string& host :
         std::vector<std::string>{"evil.example", "evil.example:" + port, "localhost.evil.example",
                                  "10.1.2.3", "[::2]:80", "127.0.0.1:x", "", "local\xffhost"}) {
        INFO("Host: " << host);
        auto res = one(ts, "GET /no HTTP/1.1\r\nHost: " + host + "\r\n\r\n");
        check_json_error(res, bhttp::status::forbidden, "host_refused");
        CHECK_THAT(res.body(),
                   Catch::Contains("--token-file") && Catch::Contains("127.0.0.1:" + port));
    }
    auto missing = one(ts, "GET /no HTTP/1.1\r\n\r\n");
    check_json_error(missing, bhttp::status::forbidden, "host_refused");
    // HTTP/1.0 may leave Host out (no browser does).
    CHECK(one(ts, "GET /ok HTTP/1.0\r\n\r\n").result() == bhttp::status::ok);
}

TEST_CASE("http server: with a token, or on a unix socket, any Host is fine", "[http]") {
    TempDir dir;
    const std::string path = (dir.path / "a.sock").string();
    ServerOptions opts;
    opts.listen = {unix_address(path)};
    TestServer unix_only(opts, echo);
    Client u(path);
    REQUIRE(u.send("GET /u HTTP/1.1\r\nHost: evil.example\r\n\r\n"));
    auto ures = u.read_response();
    REQUIRE(ures);
    CHECK(ures->result() == bhttp::status::ok);

    ServerOptions with_token;
    with_token.bearer_token = "0123456789abcdef";
    TestServer tok(std::move(with_token), echo);
    auto res = one(tok,
                   "GET /t HTTP/1.1\r\nHost: agent.example.com:7070\r\n"
                   "Authorization: Bearer 0123456789abcdef\r\n\r\n");
    CHECK(res.result() == bhttp::status::ok);
    auto no_token = one(tok, "GET /t HTTP/1.1\r\nHost: agent.example.com\r\n\r\n");
    check_json_error(no_token, bhttp::status::unauthorized, "unauthorized");
}

TEST_CASE("http server: beyond max_connections a listener closes new connections at once",
          "[http]") {
    TempDir dir;
    const std::string path = (dir.path / "cap.sock").string();
    ServerOptions opts;
    opts.listen = {loopback_any_port(), unix_address(path)};
    opts.max_connections = 3;
    opts.idle_timeout = 30s;
    opts.read_timeout = 30s;
    TestServer ts(opts, echo);
    std::vector<std::unique_ptr<Client>> idle;
    for (int i = 0; i < 3; ++i) {
        idle.push_back(std::make_unique<Client>(ts.port()));
    }
    REQUIRE(ts.wait_connections(3));
    Client fourth(ts.port());
    CHECK(fourth.closed_by_server(2s));
    CHECK(ts.server->connections_refused() == 1);
    CHECK(ts.server->connections() == 3);
    // The cap is per listener: the unix socket still answers.
    Client other(path);
    REQUIRE(other.send(get("/other")));
    auto res = other.read_response();
    REQUIRE(res);
    CHECK(res->body() == "GET /other");
    // A held connection still works, and once one goes a new one is taken.
    REQUIRE(idle[0]->send(get("/held")));
    CHECK(idle[0]->read_response());
    idle[1]->close();
    REQUIRE(ts.wait_connections(3));  // two idle TCP + the unix one
    Client fifth(ts.port());
    REQUIRE(fifth.send(get("/fifth")));
    auto fifth_res = fifth.read_response();
    REQUIRE(fifth_res);
    CHECK(fifth_res->body() == "GET /fifth");
}

// ---------------------------------------------------------------------------------------------
// Where unix sockets are made: checked directory, no symlinks, only a dead socket replaced.

TEST_CASE("http server: the socket directory is created 0750 and the socket 0600", "[http]") {
    TempDir dir;
    const auto sub = dir.path / "run-wrenn";
    const std::string path = (sub / "agent.sock").string();
    ServerOptions opts;
    opts.listen = {unix_address(path)};
    opts.unix_socket_group = "no-such-group-wrenn-test";
    const mode_t old_umask = ::umask(0);  // the modes must not depend on the umask
    {
        TestServer ts(opts, echo);
        ::umask(old_umask);
        struct stat st {};
        REQUIRE(::lstat(sub.c_str(), &st) == 0);
        CHECK(S_ISDIR(st.st_mode));
        CHECK((st.st_mode & 07777) == 0750);
        REQUIRE(::lstat(path.c_str(), &st) == 0);
        CHECK(S_ISSOCK(st.st_mode));
        CHECK((st.st_mode & 07777) == 0600);
        Client c(path);
        REQUIRE(c.send(get("/in-dir")));
        CHECK(c.read_response());
    }
    ::umask(old_umask);
    CHECK_FALSE(std::filesystem::exists(path));
    CHECK(std::filesystem::is_directory(sub));  // kept for the next start
}

TEST_CASE("http server: with an existing group the socket is 0660 and in that group", "[http]") {
    // The group this process runs as exists by definition, and chown to it needs no root.
    const group* g = ::getgrgid(::getegid());
    REQUIRE(g != nullptr);
    const std::string group_name = g->gr_name;
    CHECK(wrenn::http::find_group(group_name) == ::getegid());
    CHECK_FALSE(wrenn::http::find_group("no-such-group-wrenn-test"));
    TempDir dir;
    const auto sub = dir.path / "d";
    const std::string path = (sub / "agent.sock").string();
    ServerOptions opts;
    opts.listen = {unix_address(path)};
    opts.unix_socket_group = group_name;
    TestServer ts(opts, echo);
    struct stat st {};
    REQUIRE(::lstat(path.c_str(), &st) == 0);
    CHECK((st.st_mode & 07777) == 0660);
    CHECK(st.st_gid == ::getegid());
    REQUIRE(::lstat(sub.c_str(), &st) == 0);
    CHECK((st.st_mode & 07777) == 0750);
    CHECK(st.st_gid == ::getegid());
}

TEST_CASE("http server: no unix socket is made through a symlink or in an unsafe directory",
          "[http]") {
    TempDir dir;
    net::io_context ioc;
    auto try_listen = [&](const std::string& path) {
        ServerOptions opts;
        opts.listen = {unix_address(path)};
        return Server::create(ioc, opts, echo);
    };
    const auto target = dir.path / "target";
    std::filesystem::create_directory(target);

    SECTION("the directory is a symlink") {
        std::filesystem::create_directory_symlink(target, dir.path / "link");
        auto server = try_listen((dir.path / "link" / "agent.sock").string());
        REQUIRE_FALSE(server.ok());
        CHECK(server.error().code() == ELOOP);
        CHECK_THAT(server.error().message(), Catch::Contains("symbolic link"));
        CHECK(std::filesystem::is_empty(target));
    }
    SECTION("the directory is a dangling symlink") {
        std::filesystem::create_directory_symlink(dir.path / "nowhere", dir.path / "link");
        auto server = try_listen((dir.path / "link" / "agent.sock").string());
        REQUIRE_FALSE(server.ok());
        CHECK(server.error().code() == ELOOP);
        CHECK_FALSE(std::filesystem::exists(dir.path / "nowhere"));
    }
    SECTION("the directory is a file") {
        { UniqueFd f(::open((dir.path / "file").c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644)); }
        auto server = try_listen((dir.path / "file" / "agent.sock").string());
        REQUIRE_FALSE(server.ok());
        CHECK(server.error().code() == ENOTDIR);
        CHECK_THAT(server.error().message(), Catch::Contains("not a directory"));
        CHECK(std::filesystem::file_size(dir.path / "file") == 0);
    }
    SECTION("the directory is writable by others") {
        REQUIRE(::chmod(target.c_str(), 0777) == 0);
        auto server = try_listen((target / "agent.sock").string());
        REQUIRE_FALSE(server.ok());
        CHECK(server.error().code() == EPERM);
        CHECK_THAT(server.error().message(), Catch::Contains("writable by group or others"));
        // With the sticky bit (as /tmp) nobody else can remove or rename our socket.
        REQUIRE(::chmod(target.c_str(), 01777) == 0);
        CHECK(try_listen((target / "agent.sock").string()).ok());
    }
    SECTION("the directory belongs to another user") {
        if (::geteuid() != 0) {
            WARN(
                "needs root to make a directory another user owns; checked where tests run as "
                "root");
            return;
        }
        REQUIRE(::chown(target.c_str(), 4242, 4242) == 0);
        auto server = try_listen((target / "agent.sock").string());
        REQUIRE_FALSE(server.ok());
        CHECK(server.error().code() == EPERM);
        CHECK_THAT(server.error().message(), Catch::Contains("owned by uid 4242"));
    }
    SECTION("the socket path is a symlink, to a socket or to a file") {
        const auto victim = target / "victim";
        { UniqueFd f(::open(victim.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644)); }
        std::filesystem::create_symlink(victim, dir.path / "agent.sock");
        auto server = try_listen((dir.path / "agent.sock").string());
        REQUIRE_FALSE(server.ok());
        CHECK(server.error().code() == EEXIST);
        CHECK_THAT(server.error().message(), Catch::Contains("symbolic link"));
        CHECK(std::filesystem::is_symlink(dir.path / "agent.sock"));
        CHECK(std::filesystem::is_regular_file(victim));
    }
    SECTION("the socket path is a directory") {
        std::filesystem::create_directory(dir.path / "agent.sock");
        auto server = try_listen((dir.path / "agent.sock").string());
        REQUIRE_FALSE(server.ok());
        CHECK(server.error().code() == EEXIST);
        CHECK(std::filesystem::is_directory(dir.path / "agent.sock"));
    }
    SECTION("the directory's parent is missing: one level only is created") {
        auto server = try_listen((dir.path / "a" / "b" / "agent.sock").string());
        REQUIRE_FALSE(server.ok());
        CHECK(server.error().code() == ENOENT);
        CHECK_FALSE(std::filesystem::exists(dir.path / "a"));
    }
}

TEST_CASE("http server: the socket directory check, directly", "[http]") {
    TempDir dir;
    auto opened = wrenn::http::open_socket_dir((dir.path / "s.sock").string(), "");
    REQUIRE(opened.ok());
    CHECK(opened->name == "s.sock");
    CHECK(opened->dir_path == dir.path.string());
    CHECK(opened->socket_mode() == 0600);
    CHECK_THAT(opened->bind_path(), Catch::StartsWith("/proc/self/fd/"));
    CHECK_FALSE(wrenn::http::open_socket_dir("relative.sock", "").ok());
    CHECK_FALSE(wrenn::http::open_socket_dir((dir.path / "").string(), "").ok());
    CHECK_FALSE(wrenn::http::open_socket_dir((dir.path / "..").string(), "").ok());
}

// ---------------------------------------------------------------------------------------------
// Streamed bodies: a route whose request body reaches a worker through a BodyReader, and
// responses a worker writes through a BodyWriter.

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
