#include "agent/daemon/serve.hpp"

#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <csignal>
#include <fstream>
#include <functional>
#include <iostream>
#include <sstream>
#include <thread>

#include "agent/api/api.hpp"
#include "agent/daemon/fd_limit.hpp"
#include "agent/daemon/logging.hpp"
#include "agent/daemon/service_notify.hpp"
#include "agent/daemon/service_status.hpp"
#include "agent/daemon/state_dir_lock.hpp"
#include "agent/platform/linux_platform.hpp"
#include "agent/sandboxes/sandbox_manager.hpp"
#include "agent/state/formats.hpp"
#include "agent/state/state_store.hpp"
#include "http/core/listen_address.hpp"
#include "http/server.hpp"

namespace wrenn::agent {

namespace asio = boost::asio;

namespace {

Result<std::string> read_token(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
        return errno_error("read token file " + path);
    }
    if ((st.st_mode & 077) != 0) {
        spdlog::warn("token file {} is readable by other users; chmod 600 it", path);
    }
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    std::string token = text.str();
    while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back())) != 0) {
        token.pop_back();
    }
    while (!token.empty() && std::isspace(static_cast<unsigned char>(token.front())) != 0) {
        token.erase(token.begin());
    }
    if (token.size() < 16) {
        return Error("read token file " + path, 0, "the token must be at least 16 characters");
    }
    return token;
}

void log_report(const RecoveryReport& report) {
    spdlog::info(
        "recovered state: {} adopted, {} paused (device gone), {} stale devices removed, "
        "{} unfinished creates removed, {} flatten/export temp files removed, {} unused TCMU "
        "devices "
        "detached, {} devices of other state dirs left alone, {} found suspended for space",
        report.adopted, report.paused, report.stale_removed, report.unfinished_removed,
        report.temp_files_removed, report.tcmu_detached, report.foreign_left,
        report.suspended_found);
    for (const auto& problem : report.problems) {
        spdlog::error("recovery: {}", problem);
    }
}

// The state dir's lock and the tag of its devices' UUIDs, before anything looks at the state:
// a second agent on the same state dir stops here, having touched nothing.
struct StateDirClaim {
    StateDirLock lock;
    std::string tag;
};
Result<StateDirClaim> claim_state_dir(const std::string& state_dir) {
    auto lock = StateDirLock::acquire(state_dir);
    if (!lock) {
        return std::move(lock).error();
    }
    auto tag = state_dir_tag(state_dir);
    if (!tag) {
        return std::move(tag).error();
    }
    spdlog::debug("state dir {} locked ({}); device tag {}", state_dir, lock->path(), *tag);
    return StateDirClaim{std::move(lock).value(), std::move(tag).value()};
}

int serve_locked(const ServeOptions& options, Platform& platform);

SandboxManager::Options manager_options(const ServeOptions& options) {
    SandboxManager::Options out;
    out.templates_dir = options.templates_dir;
    out.fork_max_stall = options.fork_max_stall;
    out.max_transfers = options.max_transfers;
    out.min_transfer_rate = options.min_transfer_rate;
    out.max_template_bytes = options.max_template_bytes;
    return out;
}

// What serving starts with: logging, then the state dir's lock, held while `serve` runs.
// Returns serve's exit status, or 2 (logging) or 1 (the lock) when those fail.
template <class Serve>
int with_state_dir_claimed(const ServeOptions& options, Serve serve) {
    if (auto logging = setup_logging(options.log_level, options.log_format); !logging) {
        std::cerr << "wrenn-agent: " << logging.error().message() << "\n";
        return 2;
    }
    auto claim = claim_state_dir(options.state_dir);
    if (!claim) {
        spdlog::error("{}", claim.error().message());
        return 1;
    }
    // Before anything reads the state dir to change it: a newer agent's files stop us here.
    if (auto formats = check_state_formats(options.state_dir); !formats) {
        spdlog::error("{}", formats.error().message());
        return kExitNewerFormat;
    }
    return serve(*claim);
}

}  // namespace

int run_serve(const ServeOptions& options) {
    return with_state_dir_claimed(options, [&](const StateDirClaim& claim) {
        LinuxPlatform::Options platform_options;
        platform_options.owner_tag = claim.tag;
        platform_options.tcmu_policy.config_dirs = options.tcmu_config_dirs;
        platform_options.tcmu_policy.handlers = options.tcmu_handlers;
        LinuxPlatform platform(platform_options);
        return serve_locked(options, platform);
    });
}

int serve_with(const ServeOptions& options, Platform& platform) {
    return with_state_dir_claimed(
        options, [&](const StateDirClaim&) { return serve_locked(options, platform); });
}

namespace {

int serve_locked(const ServeOptions& options, Platform& platform) {
    http::ServerOptions server_options;
    server_options.max_connections = options.max_connections;
    server_options.auth_timeout = options.auth_timeout;
    std::optional<std::string> first_tcp;
    for (const auto& text : options.listen) {
        auto address = http::parse_listen_address(text);
        if (!address) {
            spdlog::error("--listen {}: {}", text, address.error().message());
            return 2;
        }
        if (address->kind == http::ListenAddress::Kind::Tcp && !first_tcp) {
            first_tcp = address->to_string();
        }
        server_options.listen.push_back(*address);
    }
    bool insecure_tcp = false;
    if (options.token_file) {
        auto token = read_token(*options.token_file);
        if (!token) {
            spdlog::error("{}", token.error().message());
            return 2;
        }
        server_options.bearer_token = *token;
    } else if (first_tcp && !options.insecure_tcp) {
        // Loopback too: every local user, container with host networking and web page in a
        // browser on this host can reach it.
        spdlog::error(
            "--listen {}: a TCP listener, loopback included, needs --token-file (anyone who can "
            "connect could create and destroy sandboxes); give --token-file FILE, use the unix "
            "socket (the default), or --insecure-tcp where the network itself is private",
            *first_tcp);
        return 2;
    } else if (first_tcp) {
        insecure_tcp = true;
        spdlog::warn(
            "serving TCP without a token (--insecure-tcp): anyone who can connect to {} may "
            "create and destroy sandboxes",
            *first_tcp);
    }
    raise_fd_limit(server_options.listen.size(), server_options.max_connections);

    auto store = StateStore::open(options.state_dir);
    if (!store) {
        spdlog::error("{}", store.error().message());
        return 1;
    }
    if (options.tcmu_config_dirs.empty()) {
        spdlog::info("TCMU origins from the API are refused (allow them with --tcmu-config-dir)");
    } else {
        std::string dirs;
        std::string handlers;
        for (const auto& d : options.tcmu_config_dirs) {
            dirs += (dirs.empty() ? "" : ", ") + d;
        }
        for (const auto& h : options.tcmu_handlers) {
            handlers += (handlers.empty() ? "" : ", ") + h;
        }
        spdlog::info("TCMU origins from the API: configs beneath {}; handlers {}", dirs, handlers);
    }
    const KernelSupport support = platform.support();
    if (!support.device_mapper) {
        spdlog::warn("device-mapper is not usable: {}; creates will answer 503 until it is",
                     support.device_mapper_reason);
    }
    Metrics metrics;
    asio::thread_pool workers(options.workers);
    SandboxManager manager(platform, *store, manager_options(options), workers, metrics);
    notify_status("recovering the sandboxes of " + store->state_dir());
    auto recovered = manager.recover();
    if (!recovered) {
        spdlog::error("{}", recovered.error().message());
        return 1;
    }
    log_report(*recovered);

    // Space first: a device recovery found suspended for space is resumed here if there is
    // room, before any request can come.
    SpaceWatcher space(platform, store->state_dir(), options.space, manager);
    manager.set_space_watcher(&space);
    if (!options.space.min_free.disabled()) {
        space.poll_once();
        const SpaceStatus now = space.status();
        spdlog::info("state filesystem: {} free of {}; --min-free {} ({}), --critical-free {} ({})",
                     human_bytes(now.space.free_bytes), human_bytes(now.space.size_bytes),
                     options.space.min_free.to_string(), human_bytes(now.min_free_bytes),
                     options.space.critical_free.to_string(), human_bytes(now.critical_free_bytes));
    }
    space.start();

    // Set before the io_context runs, so before any request can read it.
    http::Server* serving = nullptr;
    ApiOptions api_options;
    api_options.insecure_tcp = insecure_tcp;
    if (!options.space.min_free.disabled()) {
        api_options.space = [&space] { return space.status(); };
    }
    api_options.connections = [&serving] {
        return serving == nullptr
                   ? ConnectionCounts{}
                   : ConnectionCounts{serving->connections(), serving->connections_refused()};
    };
    api_options.max_import_bytes = options.max_import_bytes;
    api_options.max_template_bytes = options.max_template_bytes;
    Api api(manager, platform, metrics, std::move(api_options));
    // POST /sandboxes/import and PUT /templates/{name} stream their bodies to the transfer pool.
    server_options.streamed_body = [&api](const http::RequestHeader& header) {
        return api.streamed_body(header);
    };
    server_options.stream_handler = [&api](http::Request&& request, http::BodyReader body,
                                           http::Respond respond) {
        api.handle_streamed(std::move(request), std::move(body), std::move(respond));
    };
    asio::io_context ioc;
    auto server = http::Server::create(ioc, server_options,
                                       [&api](http::Request&& request, http::Respond respond) {
                                           api.handle(std::move(request), std::move(respond));
                                       });
    if (!server) {
        spdlog::error("{}", server.error().message());
        return 1;
    }
    serving = server->get();
    std::string addresses;
    for (const auto& address : (*server)->bound()) {
        spdlog::info("wrenn-agent serving on {} (state {}, templates {})", address.to_string(),
                     store->state_dir(), options.templates_dir);
        addresses += (addresses.empty() ? "" : ", ") + address.to_string();
    }
    // READY=1 once every listener accepts, and from then on a STATUS= line kept current.
    ServiceStatus status(
        ioc,
        [&] {
            return ServiceFacts{addresses, manager.count_by_state(),
                                options.space.min_free.disabled() ? SpaceStatus{} : space.status()};
        },
        std::chrono::seconds(5));
    status.start();

    // The watchdog (WatchdogSec= in the unit): WATCHDOG=1 from the event loop itself, so that
    // an io_context that stops turning is restarted by systemd.
    asio::steady_timer watchdog(ioc);
    std::function<void(const boost::system::error_code&)> on_watchdog;
    if (const auto interval = watchdog_interval()) {
        spdlog::info("systemd watchdog: WATCHDOG=1 every {} ms", interval->count() / 1000);
        on_watchdog = [&, every = *interval](const boost::system::error_code& ec) {
            if (ec) {
                return;
            }
            notify_watchdog();
            watchdog.expires_after(every);
            watchdog.async_wait(on_watchdog);
        };
        on_watchdog({});
    }

    // SIGHUP (systemctl reload): re-read --token-file, so that rotating the token drops no
    // connection. A file that cannot be read, or holds no valid token, keeps the old one.
    asio::signal_set reload(ioc, SIGHUP);
    std::function<void(const boost::system::error_code&, int)> on_reload =
        [&](const boost::system::error_code& ec, int) {
            if (ec) {
                return;
            }
            if (!options.token_file) {
                spdlog::info("SIGHUP: nothing to reload (no --token-file)");
            } else if (auto token = read_token(*options.token_file); !token) {
                spdlog::error("SIGHUP: {}; the old token stays in use", token.error().message());
            } else {
                (*server)->set_bearer_token(*token);
                spdlog::info("SIGHUP: token reloaded from {}", *options.token_file);
            }
            reload.async_wait(on_reload);
        };
    reload.async_wait(on_reload);

    // SIGINT/SIGTERM: stop accepting; a helper thread waits for operations in flight (never
    // the io_context, which must keep writing their responses), then stops the loop.
    std::thread drainer;
    asio::signal_set signals(ioc, SIGINT, SIGTERM);
    signals.async_wait([&](const boost::system::error_code& ec, int signal) {
        if (ec) {
            return;
        }
        spdlog::info("signal {}: no new connections; finishing {} operation(s) in flight", signal,
                     manager.in_flight());
        (*server)->stop_accepting();
        reload.cancel();
        watchdog.cancel();
        status.stop();
        notify_stopping("stopping: finishing " + std::to_string(manager.in_flight()) +
                        " operation(s) in flight");
        drainer = std::thread([&] {
            // Transfers may stream for long: after the grace, their connections are cut, which
            // fails them, and each removes what it wrote.
            if (!manager.wait_idle_for(options.shutdown_grace)) {
                spdlog::warn(
                    "{} operation(s) still in flight after --shutdown-grace {} ms: "
                    "closing every connection, which cuts the transfers",
                    manager.in_flight(), options.shutdown_grace.count());
                (*server)->close_connections();
                manager.wait_idle();
            }
            // Let the last responses reach their sockets.
            for (int i = 0; i < 50 && (*server)->connections() > 0; ++i) {
                std::this_thread::sleep_for(std::chrono::milliseconds(20));
            }
            ioc.stop();
        });
    });
    std::signal(SIGPIPE, SIG_IGN);

    const unsigned io_threads = std::max(1u, std::min(2u, std::thread::hardware_concurrency()));
    std::vector<std::thread> threads;
    for (unsigned i = 1; i < io_threads; ++i) {
        threads.emplace_back([&ioc] { ioc.run(); });
    }
    ioc.run();
    for (auto& t : threads) {
        t.join();
    }
    if (drainer.joinable()) {
        drainer.join();
    }
    space.stop();
    if (const std::size_t suspended = manager.suspended_for_space(); suspended > 0) {
        spdlog::warn(
            "stopping with {} sandbox(es) suspended for space; the next start resumes "
            "them once there is room",
            suspended);
    }
    // Queries answer on the io_context: none may still run when it is destroyed.
    manager.shutdown();
    spdlog::info("wrenn-agent stopped");
    return 0;
}

}  // namespace

int run_cleanup_stale(const ServeOptions& options) {
    return with_state_dir_claimed(options, [&](const StateDirClaim& claim) {
        auto store = StateStore::open(options.state_dir);
        if (!store) {
            spdlog::error("cleanup-stale: {}", store.error().message());
            return 1;
        }
        LinuxPlatform::Options platform_options;
        platform_options.owner_tag = claim.tag;
        LinuxPlatform platform(platform_options);
        if (!platform.support().device_mapper) {
            spdlog::error("cleanup-stale: {}", platform.support().device_mapper_reason);
            return 1;
        }
        Metrics metrics;
        asio::thread_pool workers(1);
        SandboxManager manager(platform, *store, SandboxManager::Options{options.templates_dir},
                               workers, metrics);
        auto report = manager.cleanup_stale();
        if (!report) {
            spdlog::error("{}; see the devices with 'dmsetup ls' and retry",
                          report.error().message());
            return 1;
        }
        spdlog::info(
            "cleanup-stale: removed {} wrenn- device(s), marked {} sandbox(es) paused, detached "
            "{} unused TCMU device(s), left {} device(s) of other state dirs alone",
            report->stale_removed, report->paused, report->tcmu_detached, report->foreign_left);
        return 0;
    });
}

}  // namespace wrenn::agent
