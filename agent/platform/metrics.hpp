#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "agent/platform/space.hpp"

namespace wrenn::agent {

// The HTTP transport's connections, as /metrics shows them.
struct ConnectionCounts {
    std::size_t open = 0;
    std::uint64_t refused = 0;  // closed at once: their listener held --max-connections
};

// Operation durations (a histogram per operation) and errors by operation and code, rendered
// in Prometheus' text format. Thread-safe.
class Metrics {
  public:
    static constexpr std::array<double, 12> kBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                        0.1,   0.25,   0.5,   1.0,  2.5,   10.0};

    // code: "ok", or the API error code the operation failed with.
    void observe(std::string_view op, std::chrono::duration<double> seconds, std::string_view code);

    struct Gauges {
        std::map<std::string, std::size_t> sandboxes_by_state;
        std::size_t loops_attached = 0;
        std::size_t tcmu_origins_attached = 0;
        std::optional<ConnectionCounts> connections;
        std::optional<SpaceStatus> space;  // the state filesystem (none: not watched)
        // Disk space each sandbox's CoW file takes (allocated blocks), by sandbox id.
        std::vector<std::pair<std::string, std::uint64_t>> cow_disk_bytes;
        // Running sandboxes whose I/O is held suspended, by who holds it ("fork", "export",
        // "space"), and those whose device failed to resume and is being retried.
        std::map<std::string, std::size_t> io_suspended_by;
        std::size_t io_resumes_failing = 0;
    };
    [[nodiscard]] std::string render(const Gauges& gauges) const;

  private:
    struct Histogram {
        std::array<std::uint64_t, kBuckets.size()> buckets{};
        std::uint64_t count = 0;
        double sum = 0;
    };
    mutable std::mutex mu_;
    std::map<std::string, Histogram, std::less<>> durations_;
    std::map<std::pair<std::string, std::string>, std::uint64_t> errors_;
};

}  // namespace wrenn::agent
