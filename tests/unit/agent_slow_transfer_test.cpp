// Slow and stalled transfers against the manager over the fake platform (issue 27, item 1):
// they stream on a pool of their own, so the workers stay free for every other sandbox; at most
// max_transfers run at once; one slower than the floor is cut; a paused sandbox's export holds
// it, a running one's only while its copy is made.
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include "agent/transfer/rate_floor.hpp"
#include "agent_fixture.hpp"

using namespace wrenn::agent;
using namespace wrenn::agent::testing;
using namespace std::chrono_literals;
using wrenn::Result;

namespace {

// A client that holds its transfer until let go: reads (or writes) block on it.
class Gate {
  public:
    void wait() {
        std::unique_lock lock(mu_);
        ++waiting_;
        changed_.notify_all();
        changed_.wait(lock, [this] { return open_; });
    }
    void open() {
        std::lock_guard lock(mu_);
        open_ = true;
        changed_.notify_all();
    }
    // Blocks until `n` calls wait here (or 5 s pass).
    bool reached(int n) {
        std::unique_lock lock(mu_);
        return changed_.wait_for(lock, 5s, [&] { return waiting_ >= n; });
    }

  private:
    std::mutex mu_;
    std::condition_variable changed_;
    bool open_ = false;
    int waiting_ = 0;
};

// The result of an operation that must not block: empty when it took longer than `limit`.
template <class T>
std::optional<Result<T, Failure>> within(std::future<Result<T, Failure>>& f,
                                         std::chrono::milliseconds limit = 5000ms) {
    if (f.wait_for(limit) != std::future_status::ready) {
        return std::nullopt;
    }
    return f.get();
}

template <class T>
std::pair<Callback<T>, std::future<Result<T, Failure>>> answer() {
    auto promise = std::make_shared<std::promise<Result<T, Failure>>>();
    auto future = promise->get_future();
    return {[promise](Result<T, Failure> out) { promise->set_value(std::move(out)); },
            std::move(future)};
}

SandboxManager::Options transfer_options(std::size_t max_transfers) {
    SandboxManager::Options o;
    o.max_transfers = max_transfers;
    return o;
}

// An upload that sends nothing until the gate opens, then breaks.
ReadBody stalled_upload(Gate& gate) {
    return [&gate](std::span<std::byte>) -> Result<std::size_t> {
        gate.wait();
        return wrenn::Error("read body", ECONNRESET, "the client went away");
    };
}

}  // namespace

TEST_CASE("stalled transfers never take the workers other sandboxes need", "[transfer][slow]") {
    // Four workers and six stalled uploads: before transfers had their own pool, four of them
    // held every worker and the create below never ran.
    AgentFixture f(transfer_options(8));
    Gate gate;
    std::vector<std::future<Result<Sandbox, Failure>>> imports;
    for (int i = 0; i < 6; ++i) {
        auto [cb, future] = answer<Sandbox>();
        f.manager->import_sandbox("in" + std::to_string(i), {}, stalled_upload(gate), cb);
        imports.push_back(std::move(future));
    }
    REQUIRE(gate.reached(6));

    for (const char* step : {"create", "pause", "resume", "destroy"}) {
        INFO(step);
        auto [cb, future] = answer<Sandbox>();
        if (std::string(step) == "create") {
            f.manager->create(CreateRequest{"a", "base", {}}, cb);
        } else if (std::string(step) == "pause") {
            f.manager->pause("a", cb);
        } else if (std::string(step) == "resume") {
            f.manager->resume("a", cb);
        } else {
            auto [done_cb, done_future] = answer<Done>();
            f.manager->destroy("a", done_cb);
            auto done = within(done_future);
            REQUIRE(done);
            CHECK(done->ok());
            continue;
        }
        auto result = within(future);
        REQUIRE(result);  // answered while six uploads stall
        CHECK(result->ok());
    }
    CHECK(f.manager->in_flight() >= 6);
    CHECK_FALSE(f.manager->wait_idle_for(100ms));

    gate.open();
    for (auto& import : imports) {
        auto result = within(import);
        REQUIRE(result);
        REQUIRE_FALSE(result->ok());
        CHECK(result->error().kind == FailureKind::InvalidArchive);
    }
    CHECK(f.manager->wait_idle_for(5000ms));
    // A broken upload leaves nothing behind.
    for (int i = 0; i < 6; ++i) {
        CHECK_FALSE(std::filesystem::exists(f.store->sandbox_dir("in" + std::to_string(i))));
    }
}

TEST_CASE("at most max_transfers run at once; one more is refused at once, not queued",
          "[transfer][slow]") {
    AgentFixture f(transfer_options(2));
    Gate gate;
    auto [cb1, first] = answer<Sandbox>();
    auto [cb2, second] = answer<Sandbox>();
    f.manager->import_sandbox("in1", {}, stalled_upload(gate), cb1);
    f.manager->import_sandbox("in2", {}, stalled_upload(gate), cb2);
    REQUIRE(gate.reached(2));

    auto [cb3, third] = answer<Sandbox>();
    f.manager->import_sandbox("in3", {}, stalled_upload(gate), cb3);
    auto refused = within(third, 1000ms);
    REQUIRE(refused);
    REQUIRE_FALSE(refused->ok());
    CHECK(refused->error().kind == FailureKind::TooManyTransfers);
    CHECK(failure_http_status(refused->error().kind) == 503);
    CHECK_THAT(refused->error().error.message(), Catch::Contains("--max-transfers"));
    CHECK_FALSE(std::filesystem::exists(f.store->sandbox_dir("in3")));
    // An export counts too.
    REQUIRE(f.create("src").ok());
    auto [ecb, exported] = answer<TransferStats>();
    f.manager->export_sandbox(
        "src", true, [] { return wrenn::archive::ByteSink{}; }, ecb);
    auto export_refused = within(exported, 1000ms);
    REQUIRE(export_refused);
    REQUIRE_FALSE(export_refused->ok());
    CHECK(export_refused->error().kind == FailureKind::TooManyTransfers);

    // Once the two end, their slots are free again.
    gate.open();
    REQUIRE(within(first));
    REQUIRE(within(second));
    Gate next;
    auto [cb4, fourth] = answer<Sandbox>();
    f.manager->import_sandbox("in4", {}, stalled_upload(next), cb4);
    CHECK(next.reached(1));
    next.open();
    auto result = within(fourth);
    REQUIRE(result);
    CHECK(result->error().kind == FailureKind::InvalidArchive);
}

TEST_CASE("an upload slower than the floor is cut, and leaves nothing", "[transfer][slow]") {
    SandboxManager::Options o;
    o.min_transfer_rate = 1000;  // bytes per second
    o.transfer_rate_window = 300ms;
    AgentFixture f(o);
    // One byte every 20 ms: 50 bytes/s, each read well within any read timeout.
    auto trickle = [](std::span<std::byte> buffer) -> Result<std::size_t> {
        std::this_thread::sleep_for(20ms);
        buffer[0] = std::byte{'W'};
        return std::size_t{1};
    };
    auto [cb, future] = answer<Sandbox>();
    const auto start = std::chrono::steady_clock::now();
    f.manager->import_sandbox("slow", {}, trickle, cb);
    auto result = within(future);
    REQUIRE(result);
    REQUIRE_FALSE(result->ok());
    CHECK(result->error().kind == FailureKind::TransferTooSlow);
    CHECK(failure_http_status(result->error().kind) == 408);
    CHECK_THAT(result->error().error.message(), Catch::Contains("--min-transfer-rate"));
    CHECK(std::chrono::steady_clock::now() - start < 3s);
    CHECK_FALSE(std::filesystem::exists(f.store->sandbox_dir("slow")));
}

TEST_CASE("a paused sandbox's export holds it; a running one's only while it copies",
          "[transfer][slow]") {
    AgentFixture f;
    REQUIRE(f.create("sb").ok());
    Gate gate;
    // The client reads nothing until the gate opens.
    auto stalled_reader = [&gate] {
        return wrenn::archive::ByteSink([&gate](std::span<const std::byte>) -> Result<void> {
            gate.wait();
            return wrenn::success();
        });
    };

    SECTION("paused: its resume waits for the export, holding no thread, then runs") {
        REQUIRE(f.pause("sb").ok());
        auto [ecb, exported] = answer<TransferStats>();
        f.manager->export_sandbox("sb", false, stalled_reader, ecb);
        REQUIRE(gate.reached(1));
        auto [rcb, resumed] = answer<Sandbox>();
        f.manager->resume("sb", rcb);
        CHECK_FALSE(within(resumed, 300ms));
        // Other sandboxes are not held.
        REQUIRE(f.create("other").ok());
        gate.open();
        auto export_result = within(exported);
        REQUIRE(export_result);
        CHECK(export_result->ok());
        auto resume_result = within(resumed);
        REQUIRE(resume_result);
        CHECK(resume_result->ok());
    }
    SECTION("running: pause and destroy go ahead while the copy streams") {
        auto [ecb, exported] = answer<TransferStats>();
        f.manager->export_sandbox("sb", false, stalled_reader, ecb);
        REQUIRE(gate.reached(1));
        auto [pcb, pausing] = answer<Sandbox>();
        f.manager->pause("sb", pcb);
        auto paused = within(pausing);
        REQUIRE(paused);
        CHECK(paused->ok());
        auto [dcb, destroyed] = answer<Done>();
        f.manager->destroy("sb", dcb);
        auto destroy_result = within(destroyed);
        REQUIRE(destroy_result);
        CHECK((destroy_result->ok() ? std::string() : destroy_result->error().error.message()) ==
              "");
        CHECK_FALSE(std::filesystem::exists(f.store->sandbox_dir("sb")));
        // The stream reads the copy it has open, and ends whole.
        gate.open();
        auto export_result = within(exported);
        REQUIRE(export_result);
        CHECK(export_result->ok());
    }
}

TEST_CASE("rate floor: judged per window of waiting on the client", "[transfer]") {
    RateFloor floor(1000, 1000ms);
    CHECK(floor.moved(10, 500ms));     // half a window of waiting: no verdict
    CHECK(floor.moved(990, 500ms));    // 1000 bytes in 1 s of waiting: just enough, a new window
    CHECK(floor.moved(1500, 1500ms));  // 1500 in 1.5 s: enough
    CHECK_FALSE(floor.moved(100, 1100ms));  // 100 in 1.1 s
    RateFloor none(0, 1000ms);
    CHECK(none.moved(0, 3600s));
    // One long wait counts whole: 2000 bytes after 3 s of waiting is under 1000/s.
    RateFloor late(1000, 1000ms);
    CHECK_FALSE(late.moved(2000, 3000ms));
    // Time the agent spends on its own work between waits does not count: many quick waits
    // that each bring a few bytes are never cut, however long the transfer takes.
    RateFloor quick(1000, 1000ms);
    for (int i = 0; i < 10000; ++i) {
        REQUIRE(quick.moved(2, 1ms));
    }
}
