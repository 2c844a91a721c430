// The agent's own code path (HTTP, routing, strands, state store on disk) served natively over
// a simulated kernel, for scripts/bench on a host without device-mapper:
//
//   api_bench [--kernel-ms MS] SERVE-ARGS...
//
// Each create and remove holds one process-wide lock for MS milliseconds (default 50), as a
// libdm call holds the agent's libdm lock; status reads take no such lock (the agent reads
// status with its own ioctl). Everything else is the real agent.
#include <chrono>
#include <iostream>
#include <mutex>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "agent/cli/cli.hpp"
#include "agent/daemon/serve.hpp"
#include "unit/fake_platform.hpp"

namespace {

using namespace wrenn;
using namespace wrenn::agent;

class SimulatedKernel : public testing::FakePlatform {
  public:
    explicit SimulatedKernel(std::chrono::milliseconds cost) : cost_(cost) {}

    Result<std::string> create_snapshot(const std::string& id, const std::string& origin_device,
                                        std::uint64_t bytes, const std::string& cow) override {
        std::lock_guard lock(kernel_);
        std::this_thread::sleep_for(cost_);
        return FakePlatform::create_snapshot(id, origin_device, bytes, cow);
    }

    Result<void> remove_snapshot(const std::string& id) override {
        std::lock_guard lock(kernel_);
        std::this_thread::sleep_for(cost_);
        return FakePlatform::remove_snapshot(id);
    }

  private:
    std::chrono::milliseconds cost_;
    std::mutex kernel_;
};

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    long kernel_ms = 50;
    if (args.size() >= 2 && args[0] == "--kernel-ms") {
        kernel_ms = std::stol(args[1]);
        args.erase(args.begin(), args.begin() + 2);
    }
    auto command = parse_command_line(args);
    if (auto* print = std::get_if<PrintAndExit>(&command)) {
        (print->status == 0 ? std::cout : std::cerr) << print->text;
        return print->status;
    }
    auto* options = std::get_if<ServeOptions>(&command);
    if (options == nullptr || options->cleanup_stale) {
        std::cerr << "usage: api_bench [--kernel-ms MS] serve OPTIONS...\n";
        return 2;
    }
    SimulatedKernel kernel{std::chrono::milliseconds(kernel_ms)};
    return serve_with(*options, kernel);
}
