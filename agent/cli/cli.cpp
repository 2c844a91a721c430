#include "agent/cli/cli.hpp"

#include <boost/program_options.hpp>
#include <charconv>
#include <sstream>

#include "agent/cli/version.hpp"
#include "tcmu/configfs/origin_policy.hpp"

namespace wrenn::agent {

namespace po = boost::program_options;

namespace {

constexpr const char* kUsage =
    R"usage(wrenn-agent: copy-on-write root filesystems for sandboxes, from shared templates.

Usage:
  wrenn-agent [serve] [options]         run the HTTP API (the default)
  wrenn-agent --cleanup-stale [--state-dir DIR] [--templates-dir DIR]
                                        at boot: remove this state dir's wrenn- devices,
                                        release our loops and TCMU devices, mark running
                                        sandboxes paused
  wrenn-agent flatten --origin FILE --cow FILE --out FILE
                                        merge a template and a paused sandbox's CoW offline
  wrenn-agent export --cow FILE --origin FILE --out FILE|- [--no-compress]
                                        write a paused sandbox's changes as an archive
  wrenn-agent import --in FILE|- --origin FILE --cow FILE [--cow-size BYTES]
                                        make a CoW from an archive (same template digest)
  wrenn-agent digest FILE               print a template image's digest, for PUT /templates
  wrenn-agent tcmu attach --id ID --config FILE [--handler NAME] [--size BYTES] [-v]
  wrenn-agent tcmu detach --id ID [-v]  attach or detach a TCMU block device (as overlaybd-attacher)

Templates are image files <templates-dir>/<name>.img. Each sandbox keeps its CoW and record in
<state-dir>/sandboxes/<id>/. One agent (serve or --cleanup-stale) per state dir: a second
one exits 1 at once (<state-dir>/agent.lock). The API is documented in docs/api.md; try
  curl --unix-socket /run/wrenn/agent.sock http://localhost/healthz
  curl --unix-socket /run/wrenn/agent.sock --json '{"id": "sb1", "template": "base"}' \
      http://localhost/sandboxes

Who may call the API: by default it listens only on the unix socket /run/wrenn/agent.sock, in a
directory the agent creates 0750; the socket is 0660 with group "wrenn" when that group exists
(add callers to it), else 0600 (root only). A TCP listener, loopback included, needs
--token-file (curl -H "Authorization: Bearer $(cat FILE)"), unless --insecure-tcp is given.
Every listener refuses requests carrying an Origin header (403: browsers) and bodies that are
not Content-Type: application/json (415), except POST /sandboxes/import, whose body is a
sandbox archive sent as Content-Type: application/vnd.wrenn.sandbox.

Options)usage";

po::options_description serve_options(ServeOptions& o) {
    po::options_description desc(kUsage);
    desc.add_options()("help,h", "print this help and exit")("version",
                                                             "print the version and exit")(
        "listen", po::value(&o.listen)->composing()->value_name("ADDR"),
        "where to serve: unix:/path, HOST:PORT or [IPv6]:PORT (repeatable; default "
        "unix:/run/wrenn/agent.sock). A TCP address, loopback included, needs --token-file "
        "or --insecure-tcp")("state-dir", po::value(&o.state_dir)->value_name("DIR"),
                             "sandbox records and CoW files (default /var/lib/wrenn)")(
        "templates-dir", po::value(&o.templates_dir)->value_name("DIR"),
        "template images <name>.img (default <state-dir>/templates)")(
        "log-level", po::value(&o.log_level)->value_name("LEVEL"),
        "trace, debug, info, warn, error or off (default info)")(
        "log-format", po::value(&o.log_format)->value_name("FORMAT"),
        "text or json: one JSON object per line (default text)")(
        "token-file", po::value<std::string>()->value_name("FILE"),
        "file holding the bearer token (16 characters or more, chmod 600) every request "
        "except GET /healthz must present as \"Authorization: Bearer TOKEN\"")(
        "insecure-tcp", po::bool_switch(&o.insecure_tcp),
        "serve TCP without a token: anyone who can connect may create and destroy sandboxes. "
        "Only where the network itself is private (as in the test VM); logged at start and "
        "shown in /healthz. The Host header must then name loopback or the --listen address")(
        "max-connections", po::value(&o.max_connections)->value_name("N"),
        "connections each listener holds at a time; beyond it new ones are closed at once "
        "and counted in /metrics, except that with --token-file a new one first takes the "
        "slot of the oldest connection that has not shown the token (default 256)")(
        "auth-timeout", po::value<std::string>()->value_name("TIME"),
        "with --token-file: a connection with no request showing the token within TIME is "
        "closed, e.g. 10s (default 10s; GET /healthz does not count)")(
        "workers", po::value(&o.workers)->value_name("N"),
        "threads for kernel operations (default 16)")(
        "cleanup-stale", po::bool_switch(&o.cleanup_stale),
        "clean up stale devices for boot, then exit (see above)");
    // Space on the state filesystem (docs/api.md, "Space").
    desc.add_options()(
        "min-free", po::value<std::string>()->value_name("SPACE"),
        "free space the state filesystem keeps: below it creates, resumes (and flattens onto "
        "it) answer 507 insufficient_storage. A size (2GiB), a share (5%) or the larger of both "
        "(default 1GiB,5%; 0 turns space watching off)")(
        "critical-free", po::value<std::string>()->value_name("SPACE"),
        "below this the running sandboxes' I/O is suspended (writes wait instead of failing "
        "and invalidating snapshots) until free space is back above --min-free (default "
        "256MiB,1%; 0: never suspend)");
    desc.add_options()("fork-max-stall", po::value<std::string>()->value_name("TIME"),
                       "the longest a fork may hold a running source's I/O suspended while it "
                       "copies the CoW, e.g. 2s or 500ms; a fork that would take longer "
                       "resumes the source and fails (default 2s)")(
        "max-import-bytes", po::value(&o.max_import_bytes)->value_name("N"),
        "the largest archive POST /sandboxes/import takes, in bytes; a larger one is refused "
        "with 413 (default 0: no fixed cap, but an archive is always refused once it passes "
        "its template's size plus 1% and 1 MiB)")(
        "max-template-bytes", po::value<std::string>()->value_name("SIZE"),
        "the largest template image PUT /templates/{name} takes, e.g. 64GiB; a larger one is "
        "refused with 413 (default 256GiB)")(
        "max-transfers", po::value(&o.max_transfers)->value_name("N"),
        "exports, imports and template uploads and downloads that may stream at once, each on a "
        "thread of its own apart from "
        "the workers; one more is refused with 503 too_many_transfers (default 8)")(
        "min-transfer-rate", po::value(&o.min_transfer_rate)->value_name("BYTES"),
        "bytes per second a client must move an export or import at, averaged over every 30 s "
        "the agent spends waiting on it, else the transfer is cut (408 transfer_too_slow for "
        "an upload), so that a trickling client cannot hold a transfer for ever (default "
        "65536; 0: no floor)")(
        "shutdown-grace", po::value<std::string>()->value_name("TIME"),
        "on SIGTERM, how long operations in flight may finish before the transfers still "
        "streaming are cut and their files removed, e.g. 20s (default 20s)");
    // TCMU origins from the API: an allowlist (docs/api.md, "TCMU origins").
    desc.add_options()("tcmu-config-dir",
                       po::value(&o.tcmu_config_dirs)->composing()->value_name("DIR"),
                       "allow TCMU origins whose config is a root-owned file beneath DIR, "
                       "reached without symlinks, with DIR and every folder on the way "
                       "root-owned and not group or world writable (repeatable; without it the "
                       "API refuses TCMU origins)")(
        "tcmu-handler", po::value<std::vector<std::string>>()->composing()->value_name("NAME"),
        "allow this TCMU handler (repeatable; default overlaybd)");
    return desc;
}

// "2s", "500ms", "2" (seconds).
std::optional<std::chrono::milliseconds> parse_duration(std::string_view text) {
    std::uint64_t value = 0;
    auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || ptr == text.data() || value > 3600000) {
        return std::nullopt;
    }
    const std::string_view unit(ptr, static_cast<std::size_t>(text.data() + text.size() - ptr));
    if (unit == "ms") {
        return std::chrono::milliseconds(value);
    }
    if (unit.empty() || unit == "s") {
        return std::chrono::milliseconds(value * 1000);
    }
    return std::nullopt;
}

}  // namespace

Command parse_command_line(const std::vector<std::string>& args_in) {
    std::vector<std::string> args = args_in;
    if (!args.empty() && (args[0] == "flatten" || args[0] == "tcmu" || args[0] == "export" ||
                          args[0] == "import" || args[0] == "digest")) {
        return Subcommand{args[0], std::vector<std::string>(args.begin() + 1, args.end())};
    }
    if (!args.empty() && args[0] == "serve") {
        args.erase(args.begin());
    }
    ServeOptions options;
    auto desc = serve_options(options);
    po::variables_map vm;
    try {
        po::store(po::command_line_parser(args).options(desc).run(), vm);
        if (vm.count("help") != 0) {
            std::ostringstream out;
            out << desc;
            return PrintAndExit{out.str(), 0};
        }
        if (vm.count("version") != 0) {
            return PrintAndExit{"wrenn-agent " + std::string(version()) + " (revision " +
                                    std::string(revision()) + ")\n",
                                0};
        }
        po::notify(vm);
    } catch (const po::error& e) {
        return PrintAndExit{std::string("wrenn-agent: ") + e.what() + " (see wrenn-agent --help)\n",
                            2};
    }
    if (vm.count("tcmu-handler") != 0) {
        options.tcmu_handlers = vm["tcmu-handler"].as<std::vector<std::string>>();
    }
    for (auto& dir : options.tcmu_config_dirs) {
        auto normal = tcmu::normalize_config_dir(dir);
        if (!normal) {
            return PrintAndExit{"wrenn-agent: " + normal.error().message() + "\n", 2};
        }
        dir = *normal;
    }
    for (const auto& handler : options.tcmu_handlers) {
        if (!tcmu::is_valid_handler_name(handler)) {
            return PrintAndExit{"wrenn-agent: --tcmu-handler \"" + tcmu::escape_for_log(handler) +
                                    "\": a handler name is 1 to 64 letters, digits, '_' or '-'\n",
                                2};
        }
    }
    for (auto [flag, threshold] : {std::pair{"min-free", &options.space.min_free},
                                   std::pair{"critical-free", &options.space.critical_free}}) {
        if (vm.count(flag) == 0) {
            continue;
        }
        auto parsed = parse_space_threshold(vm[flag].as<std::string>());
        if (!parsed) {
            return PrintAndExit{
                "wrenn-agent: --" + std::string(flag) + ": " + parsed.error().message() + "\n", 2};
        }
        *threshold = *parsed;
    }
    if (vm.count("auth-timeout") != 0) {
        auto timeout = parse_duration(vm["auth-timeout"].as<std::string>());
        if (!timeout || *timeout < std::chrono::seconds(1) || *timeout > std::chrono::hours(1) ||
            *timeout % std::chrono::seconds(1) != std::chrono::milliseconds(0)) {
            return PrintAndExit{
                "wrenn-agent: --auth-timeout: whole seconds from 1s to 3600s, like 10s\n", 2};
        }
        options.auth_timeout = std::chrono::duration_cast<std::chrono::seconds>(*timeout);
    }
    if (vm.count("shutdown-grace") != 0) {
        auto grace = parse_duration(vm["shutdown-grace"].as<std::string>());
        if (!grace || *grace > std::chrono::minutes(10)) {
            return PrintAndExit{
                "wrenn-agent: --shutdown-grace: a time from 0s to 600s, like 20s or 500ms\n", 2};
        }
        options.shutdown_grace = *grace;
    }
    if (vm.count("fork-max-stall") != 0) {
        auto stall = parse_duration(vm["fork-max-stall"].as<std::string>());
        if (!stall || *stall <= std::chrono::milliseconds(0) ||
            *stall > std::chrono::milliseconds(60000)) {
            return PrintAndExit{
                "wrenn-agent: --fork-max-stall: a time from 1ms to 60s, like 2s or 500ms\n", 2};
        }
        options.fork_max_stall = *stall;
    }
    if (vm.count("max-template-bytes") != 0) {
        auto size = parse_space_threshold(vm["max-template-bytes"].as<std::string>());
        if (!size || size->percent != 0 || size->bytes == 0) {
            return PrintAndExit{
                "wrenn-agent: --max-template-bytes: a size in bytes, like 68719476736 or 64GiB\n",
                2};
        }
        options.max_template_bytes = size->bytes;
    }
    if (options.space.min_free.disabled() && vm.count("critical-free") == 0) {
        options.space.critical_free = {};  // --min-free 0 turns watching off altogether
    }
    if (std::string problem = options.space.check(); !problem.empty()) {
        return PrintAndExit{"wrenn-agent: " + problem + "\n", 2};
    }
    if (vm.count("token-file") != 0) {
        options.token_file = vm["token-file"].as<std::string>();
    }
    if (options.listen.empty()) {
        options.listen = {"unix:/run/wrenn/agent.sock"};
    }
    if (options.templates_dir.empty()) {
        options.templates_dir = options.state_dir + "/templates";
    }
    if (options.log_format != "text" && options.log_format != "json") {
        return PrintAndExit{"wrenn-agent: --log-format must be text or json\n", 2};
    }
    if (options.max_connections == 0 || options.max_connections > 65536) {
        return PrintAndExit{"wrenn-agent: --max-connections must be between 1 and 65536\n", 2};
    }
    if (options.max_transfers == 0 || options.max_transfers > 1024) {
        return PrintAndExit{"wrenn-agent: --max-transfers must be between 1 and 1024\n", 2};
    }
    if (options.workers == 0 || options.workers > 1024) {
        return PrintAndExit{"wrenn-agent: --workers must be between 1 and 1024\n", 2};
    }
    return options;
}

}  // namespace wrenn::agent
