#include "agent/metrics.hpp"

#include <cstdio>

namespace wrenn::agent {

void Metrics::observe(std::string_view op, std::chrono::duration<double> seconds,
                      std::string_view code) {
    const double s = seconds.count();
    std::lock_guard lock(mu_);
    auto it = durations_.find(op);
    if (it == durations_.end()) {
        it = durations_.emplace(std::string(op), Histogram{}).first;
    }
    Histogram& h = it->second;
    for (std::size_t i = 0; i < kBuckets.size(); ++i) {
        if (s <= kBuckets[i]) {
            ++h.buckets[i];
        }
    }
    ++h.count;
    h.sum += s;
    if (code != "ok") {
        ++errors_[{std::string(op), std::string(code)}];
    }
}

std::string Metrics::render(const Gauges& gauges) const {
    std::string out;
    char line[256];
    out += "# HELP wrenn_sandboxes Sandboxes by state.\n# TYPE wrenn_sandboxes gauge\n";
    for (const char* state : {"running", "paused"}) {
        auto it = gauges.sandboxes_by_state.find(state);
        std::snprintf(line, sizeof line, "wrenn_sandboxes{state=\"%s\"} %zu\n", state,
                      it == gauges.sandboxes_by_state.end() ? 0 : it->second);
        out += line;
    }
    out +=
        "# HELP wrenn_loops_attached Template loop devices held by the agent.\n"
        "# TYPE wrenn_loops_attached gauge\n";
    out += "wrenn_loops_attached " + std::to_string(gauges.loops_attached) + "\n";
    out +=
        "# HELP wrenn_tcmu_origins_attached TCMU origins held by the agent.\n"
        "# TYPE wrenn_tcmu_origins_attached gauge\n";
    out += "wrenn_tcmu_origins_attached " + std::to_string(gauges.tcmu_origins_attached) + "\n";
    if (gauges.connections) {
        out +=
            "# HELP wrenn_connections_open HTTP connections open now.\n"
            "# TYPE wrenn_connections_open gauge\n";
        out += "wrenn_connections_open " + std::to_string(gauges.connections->open) + "\n";
        out +=
            "# HELP wrenn_connections_refused_total Connections closed at once because their "
            "listener held --max-connections.\n"
            "# TYPE wrenn_connections_refused_total counter\n";
        out +=
            "wrenn_connections_refused_total " + std::to_string(gauges.connections->refused) + "\n";
    }

    if (gauges.space && gauges.space->known) {
        const SpaceStatus& space = *gauges.space;
        out +=
            "# HELP wrenn_state_fs_free_bytes Free space on the state filesystem.\n"
            "# TYPE wrenn_state_fs_free_bytes gauge\n";
        out += "wrenn_state_fs_free_bytes " + std::to_string(space.space.free_bytes) + "\n";
        out +=
            "# HELP wrenn_state_fs_size_bytes Size of the state filesystem.\n"
            "# TYPE wrenn_state_fs_size_bytes gauge\n";
        out += "wrenn_state_fs_size_bytes " + std::to_string(space.space.size_bytes) + "\n";
        out +=
            "# HELP wrenn_state_fs_min_free_bytes --min-free on this filesystem: below it, "
            "creates and resumes answer 507.\n"
            "# TYPE wrenn_state_fs_min_free_bytes gauge\n";
        out += "wrenn_state_fs_min_free_bytes " + std::to_string(space.min_free_bytes) + "\n";
        out +=
            "# HELP wrenn_state_fs_critical_free_bytes --critical-free on this filesystem: "
            "below it, running sandboxes' I/O is suspended.\n"
            "# TYPE wrenn_state_fs_critical_free_bytes gauge\n";
        out += "wrenn_state_fs_critical_free_bytes " + std::to_string(space.critical_free_bytes) +
               "\n";
    }
    if (gauges.space) {
        out +=
            "# HELP wrenn_sandboxes_suspended_for_space Running sandboxes whose I/O is suspended "
            "until the state filesystem has room again.\n"
            "# TYPE wrenn_sandboxes_suspended_for_space gauge\n";
        out +=
            "wrenn_sandboxes_suspended_for_space " + std::to_string(gauges.space->suspended) + "\n";
        out +=
            "# HELP wrenn_space_suspensions_total Times the state filesystem fell below "
            "--critical-free.\n"
            "# TYPE wrenn_space_suspensions_total counter\n";
        out += "wrenn_space_suspensions_total " + std::to_string(gauges.space->suspensions) + "\n";
    }
    out +=
        "# HELP wrenn_sandbox_cow_disk_bytes Disk space a sandbox's CoW file takes.\n"
        "# TYPE wrenn_sandbox_cow_disk_bytes gauge\n";
    for (const auto& [id, bytes] : gauges.cow_disk_bytes) {
        // Ids are [A-Za-z0-9_-]: nothing to escape in a label value.
        out +=
            "wrenn_sandbox_cow_disk_bytes{sandbox=\"" + id + "\"} " + std::to_string(bytes) + "\n";
    }

    std::lock_guard lock(mu_);
    out +=
        "# HELP wrenn_operation_duration_seconds Duration of sandbox operations.\n"
        "# TYPE wrenn_operation_duration_seconds histogram\n";
    for (const auto& [op, h] : durations_) {
        for (std::size_t i = 0; i < kBuckets.size(); ++i) {
            std::snprintf(line, sizeof line,
                          "wrenn_operation_duration_seconds_bucket{op=\"%s\",le=\"%g\"} %llu\n",
                          op.c_str(), kBuckets[i], static_cast<unsigned long long>(h.buckets[i]));
            out += line;
        }
        std::snprintf(line, sizeof line,
                      "wrenn_operation_duration_seconds_bucket{op=\"%s\",le=\"+Inf\"} %llu\n"
                      "wrenn_operation_duration_seconds_sum{op=\"%s\"} %.6f\n"
                      "wrenn_operation_duration_seconds_count{op=\"%s\"} %llu\n",
                      op.c_str(), static_cast<unsigned long long>(h.count), op.c_str(), h.sum,
                      op.c_str(), static_cast<unsigned long long>(h.count));
        out += line;
    }
    out +=
        "# HELP wrenn_operation_errors_total Failed operations by error code.\n"
        "# TYPE wrenn_operation_errors_total counter\n";
    for (const auto& [key, n] : errors_) {
        std::snprintf(line, sizeof line,
                      "wrenn_operation_errors_total{op=\"%s\",code=\"%s\"} %llu\n",
                      key.first.c_str(), key.second.c_str(), static_cast<unsigned long long>(n));
        out += line;
    }
    return out;
}

}  // namespace wrenn::agent
