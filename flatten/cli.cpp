#include "flatten/cli.hpp"

#include <boost/program_options.hpp>

#include "flatten/flatten.hpp"

namespace wrenn::flatten {

namespace po = boost::program_options;

int run_cli(std::vector<std::string> args, std::ostream& out, std::ostream& err) {
    if (!args.empty() && args.front() == "flatten") {
        args.erase(args.begin());
    }
    std::string origin;
    std::string cow;
    std::string output;
    po::options_description options(
        "flatten: merge an origin image and a paused snapshot's CoW file into one image");
    options.add_options()("help,h", "show this help")("origin", po::value(&origin)->required(),
                                                      "origin image (file or block device)")(
        "cow", po::value(&cow)->required(), "CoW file of the removed dm-snapshot")(
        "out", po::value(&output)->required(), "image to write (must not exist)");
    po::variables_map vm;
    try {
        po::store(po::command_line_parser(args).options(options).run(), vm);
        if (vm.count("help") != 0) {
            out << options;
            return 0;
        }
        po::notify(vm);
    } catch (const po::error& e) {
        err << "flatten: " << e.what() << "\n" << options;
        return 2;
    }
    auto stats = flatten(origin, cow, output);
    if (!stats) {
        err << "flatten: " << stats.error().message() << "\n";
        return 1;
    }
    out << "flattened " << origin << " + " << cow << " into " << output << ": " << stats->size_bytes
        << " bytes, " << stats->chunks_applied << " chunks applied, copied by "
        << to_string(stats->method) << " (" << describe_phases(*stats) << ")\n";
    return 0;
}

}  // namespace wrenn::flatten
