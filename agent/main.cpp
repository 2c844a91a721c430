// wrenn-agent's entry point: parse the command line and hand over. Everything else lives in
// wrenn_agent_core, which the tests link too.
#include <iostream>
#include <string>
#include <variant>
#include <vector>

#include "agent/cli/cli.hpp"
#include "agent/daemon/logging.hpp"
#include "agent/daemon/serve.hpp"
#include "agent/transfer/transfer.hpp"
#include "flatten/cli.hpp"
#include "tcmu/cli.hpp"

int main(int argc, char** argv) {
    using namespace wrenn::agent;
    const std::vector<std::string> args(argv + 1, argv + argc);
    try {
        const Command command = parse_command_line(args);
        if (const auto* print = std::get_if<PrintAndExit>(&command)) {
            (print->status == 0 ? std::cout : std::cerr) << print->text;
            return print->status;
        }
        if (const auto* sub = std::get_if<Subcommand>(&command)) {
            // Their logs go to stderr: stdout carries only the result (tcmu attach prints the
            // disk, which scripts capture).
            (void)setup_logging("info", "text");
            if (sub->name == "flatten") {
                return wrenn::flatten::run_cli(sub->args, std::cout, std::cerr);
            }
            if (sub->name == "export" || sub->name == "import" || sub->name == "digest") {
                std::vector<std::string> transfer_args{sub->name};
                transfer_args.insert(transfer_args.end(), sub->args.begin(), sub->args.end());
                return run_transfer_cli(transfer_args, std::cout, std::cerr);
            }
            return wrenn::tcmu::run_cli(sub->args, std::cout, std::cerr);
        }
        const auto& options = std::get<ServeOptions>(command);
        return options.cleanup_stale ? run_cleanup_stale(options) : run_serve(options);
    } catch (const std::exception& e) {
        // Only startup can throw (allocation, thread creation); nothing recovers from that.
        std::cerr << "wrenn-agent: " << e.what() << "\n";
        return 1;
    }
}
