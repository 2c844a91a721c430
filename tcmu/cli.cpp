#include "tcmu/cli.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/program_options.hpp>
#include <ostream>

#include "tcmu/configfs/naming.hpp"

namespace wrenn::tcmu {

namespace po = boost::program_options;

namespace {

constexpr const char* kUsage =
    "usage: wrenn-agent tcmu attach --id ID --config FILE [--handler NAME] [--size BYTES] [-v]\n"
    "       wrenn-agent tcmu detach --id ID [-v]\n";

// Parses args (the words after the subcommand) against desc; usage errors go to err.
bool parse(const std::vector<std::string>& args, const po::options_description& desc,
           po::variables_map& vm, std::ostream& err) {
    try {
        po::store(po::command_line_parser(args).options(desc).run(), vm);
        po::notify(vm);
    } catch (const po::error& e) {
        err << "wrenn-agent tcmu: " << e.what() << "\n" << kUsage;
        return false;
    }
    return true;
}

}  // namespace

int run_cli(std::vector<std::string> args, std::ostream& out, std::ostream& err) {
    Configfs configfs;
    return run_cli(std::move(args), out, err, configfs);
}

int run_cli(std::vector<std::string> args, std::ostream& out, std::ostream& err,
            Configfs& configfs) {
    if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
        (args.empty() ? err : out) << kUsage;
        return args.empty() ? 2 : 0;
    }
    const std::string command = args[0];
    args.erase(args.begin());

    std::string id;
    bool verbose = false;
    po::options_description desc("options");
    desc.add_options()("help,h", "show this help")(
        "id", po::value(&id), "device id (1 to 13 digits)")("verbose,v", po::bool_switch(&verbose),
                                                            "debug logging");

    if (command == "attach") {
        AttachRequest req;
        std::uint64_t size = 0;
        desc.add_options()("config", po::value(&req.config_path)->required(),
                           "handler config (overlaybd config.v1.json, or a .qcow2 for qcow)")(
            "handler", po::value(&req.handler)->default_value("overlaybd"), "tcmu handler name")(
            "size", po::value(&size), "device size in bytes (dev_size)");
        po::variables_map vm;
        if (std::find(args.begin(), args.end(), "--help") != args.end() ||
            std::find(args.begin(), args.end(), "-h") != args.end()) {
            out << kUsage << desc;
            return 0;
        }
        if (!parse(args, desc, vm, err)) {
            return 2;
        }
        if (verbose) {
            spdlog::set_level(spdlog::level::debug);
        }
        if (vm.count("size") != 0) {
            req.size_bytes = size;
        }
        // Without --id the id follows from the origin spec, so a repeated attach finds the same
        // device (and the agent, given the same spec, the same id).
        req.id =
            vm.count("id") != 0 ? id : id_for_origin(req.handler, req.config_path, req.size_bytes);
        auto disk = configfs.attach(req);
        if (!disk) {
            err << "wrenn-agent tcmu: " << disk.error().message() << "\n";
            return 1;
        }
        out << *disk << "\n";
        return 0;
    }
    if (command == "detach") {
        po::variables_map vm;
        if (std::find(args.begin(), args.end(), "--help") != args.end() ||
            std::find(args.begin(), args.end(), "-h") != args.end()) {
            out << kUsage << desc;
            return 0;
        }
        if (!parse(args, desc, vm, err)) {
            return 2;
        }
        if (vm.count("id") == 0) {
            err << "wrenn-agent tcmu: detach needs --id\n" << kUsage;
            return 2;
        }
        if (verbose) {
            spdlog::set_level(spdlog::level::debug);
        }
        Result<void> r = configfs.detach(id);
        if (!r) {
            err << "wrenn-agent tcmu: " << r.error().message() << "\n";
            return 1;
        }
        return 0;
    }
    err << "wrenn-agent tcmu: unknown command \"" << command << "\"\n" << kUsage;
    return 2;
}

}  // namespace wrenn::tcmu
