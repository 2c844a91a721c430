#pragma once

// A SandboxManager over a FakePlatform and a state dir in a fresh temp folder, with a template
// "base" in it; helpers that wait for an operation's callback.

#include <fcntl.h>
#include <unistd.h>

#include <boost/asio/thread_pool.hpp>
#include <chrono>
#include <filesystem>
#include <future>
#include <memory>
#include <thread>

#include "agent/api/api.hpp"
#include "agent/sandboxes/sandbox_manager.hpp"
#include "agent/state/state_store.hpp"
#include "expected_digest.hpp"
#include "fake_platform.hpp"

namespace wrenn::agent::testing {

class TempDir {
  public:
    TempDir() {
        std::string tmpl = (std::filesystem::temp_directory_path() / "wrenn-test-XXXXXX").string();
        path_ = ::mkdtemp(tmpl.data());
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    [[nodiscard]] const std::string& path() const { return path_; }

  private:
    std::string path_;
};

inline void write_file(const std::string& path, std::uint64_t size) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    REQUIRE(fd >= 0);
    REQUIRE(::ftruncate(fd, static_cast<off_t>(size)) == 0);
    ::close(fd);
}

struct AgentFixture {
    TempDir tmp;
    FakePlatform platform;
    Metrics metrics;
    boost::asio::thread_pool workers{4};
    std::unique_ptr<StateStore> store;
    std::unique_ptr<SandboxManager> manager;
    // What start() gives the manager (its templates_dir is always templates_dir()).
    SandboxManager::Options options;

    explicit AgentFixture(SandboxManager::Options o = {}) : options(std::move(o)) {
        std::filesystem::create_directories(templates_dir());
        write_file(templates_dir() + "/base.img", platform.origin_size);
        start();
    }
    ~AgentFixture() { stop(); }

    std::string templates_dir() const { return tmp.path() + "/templates"; }

    void start() {
        auto opened = StateStore::open(tmp.path() + "/state");
        REQUIRE(opened.ok());
        store = std::make_unique<StateStore>(std::move(opened).value());
        options.templates_dir = templates_dir();
        manager = std::make_unique<SandboxManager>(platform, *store, options, workers, metrics);
    }
    // As a restart of the agent: a new manager over the same state dir and "kernel".
    void stop() {
        platform.release_digest_reads();  // a held background read would hold the stop
        manager.reset();
    }
    RecoveryReport restart() {
        stop();
        start();
        auto report = manager->recover();
        REQUIRE(report.ok());
        return std::move(report).value();
    }

    template <class T, class Op>
    Result<T, Failure> wait(Op op) {
        auto promise = std::make_shared<std::promise<Result<T, Failure>>>();
        auto future = promise->get_future();
        op([promise](Result<T, Failure> out) { promise->set_value(std::move(out)); });
        return future.get();
    }

    Result<Sandbox, Failure> create(const std::string& id, const std::string& tmpl = "base") {
        return wait<Sandbox>([&](auto cb) { manager->create(CreateRequest{id, tmpl, {}}, cb); });
    }
    Result<Sandbox, Failure> pause(const std::string& id) {
        return wait<Sandbox>([&](auto cb) { manager->pause(id, cb); });
    }
    Result<Sandbox, Failure> resume(const std::string& id) {
        return wait<Sandbox>([&](auto cb) { manager->resume(id, cb); });
    }
    Result<Done, Failure> destroy(const std::string& id) {
        return wait<Done>([&](auto cb) { manager->destroy(id, cb); });
    }
    Result<TemplateInfo, Failure> flatten(const std::string& id, const std::string& name) {
        return wait<TemplateInfo>([&](auto cb) { manager->flatten(id, name, cb); });
    }

    // The template digest in sandbox `id`'s record, once the background read has written it
    // there (empty after 10 s).
    std::string recorded_digest(const std::string& id) {
        for (int i = 0; i < 1000; ++i) {
            auto sb = manager->get(id);
            if (sb && sb->origin.identity && !sb->origin.identity->digest.empty()) {
                return sb->origin.identity->digest;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        return {};
    }
};

}  // namespace wrenn::agent::testing
