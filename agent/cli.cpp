#include "agent/cli.hpp"

#include <boost/program_options.hpp>
#include <sstream>

#include "agent/version.hpp"

namespace wrenn::agent {

namespace po = boost::program_options;

namespace {

constexpr const char* kUsage =
    R"(wrenn-agent: copy-on-write root filesystems for sandboxes, from shared templates.

Usage:
  wrenn-agent [serve] [options]         run the HTTP API (the default)
  wrenn-agent --cleanup-stale [--state-dir DIR] [--templates-dir DIR]
                                        at boot: remove this state dir's wrenn- devices,
                                        release our loops and TCMU devices, mark running
                                        sandboxes paused
  wrenn-agent flatten --origin FILE --cow FILE --out FILE
                                        merge a template and a paused sandbox's CoW offline
  wrenn-agent tcmu attach --id ID --config FILE [--handler NAME] [--size BYTES] [-v]
  wrenn-agent tcmu detach --id ID [-v]  attach or detach a TCMU block device (as overlaybd-attacher)

Templates are image files <templates-dir>/<name>.img. Each sandbox keeps its CoW and record in
<state-dir>/sandboxes/<id>/. One agent (serve or --cleanup-stale) per state dir: a second
one exits 1 at once (<state-dir>/agent.lock). The API is documented in docs/api.md; try
  curl -X POST localhost:7070/sandboxes -d '{"id": "sb1", "template": "base"}'

Options)";

po::options_description serve_options(ServeOptions& o) {
    po::options_description desc(kUsage);
    desc.add_options()("help,h", "print this help and exit")("version",
                                                             "print the version and exit")(
        "listen", po::value(&o.listen)->composing()->value_name("ADDR"),
        "where to serve: HOST:PORT, [IPv6]:PORT or unix:/path (repeatable; default "
        "127.0.0.1:7070). Anything but loopback or a unix socket needs --token-file")(
        "state-dir", po::value(&o.state_dir)->value_name("DIR"),
        "sandbox records and CoW files (default /var/lib/wrenn)")(
        "templates-dir", po::value(&o.templates_dir)->value_name("DIR"),
        "template images <name>.img (default <state-dir>/templates)")(
        "log-level", po::value(&o.log_level)->value_name("LEVEL"),
        "trace, debug, info, warn, error or off (default info)")(
        "log-format", po::value(&o.log_format)->value_name("FORMAT"),
        "text or json: one JSON object per line (default text)")(
        "token-file", po::value<std::string>()->value_name("FILE"),
        "file holding the bearer token every request except GET /healthz must present")(
        "insecure-no-token", po::bool_switch(&o.insecure_no_token),
        "allow a non-loopback --listen without a token (only where the network itself is "
        "private, as in the test VM)")("workers", po::value(&o.workers)->value_name("N"),
                                       "threads for kernel operations (default 16)")(
        "cleanup-stale", po::bool_switch(&o.cleanup_stale),
        "clean up stale devices for boot, then exit (see above)");
    return desc;
}

}  // namespace

Command parse_command_line(const std::vector<std::string>& args_in) {
    std::vector<std::string> args = args_in;
    if (!args.empty() && (args[0] == "flatten" || args[0] == "tcmu")) {
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
            return PrintAndExit{"wrenn-agent " + std::string(version()) + "\n", 0};
        }
        po::notify(vm);
    } catch (const po::error& e) {
        return PrintAndExit{std::string("wrenn-agent: ") + e.what() + " (see wrenn-agent --help)\n",
                            2};
    }
    if (vm.count("token-file") != 0) {
        options.token_file = vm["token-file"].as<std::string>();
    }
    if (options.listen.empty()) {
        options.listen = {"127.0.0.1:7070"};
    }
    if (options.templates_dir.empty()) {
        options.templates_dir = options.state_dir + "/templates";
    }
    if (options.log_format != "text" && options.log_format != "json") {
        return PrintAndExit{"wrenn-agent: --log-format must be text or json\n", 2};
    }
    if (options.workers == 0 || options.workers > 1024) {
        return PrintAndExit{"wrenn-agent: --workers must be between 1 and 1024\n", 2};
    }
    return options;
}

}  // namespace wrenn::agent
