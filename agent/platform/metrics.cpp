#include "agent/platform/metrics.hpp"

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
    // One metric with no labels: its help, its type and its value.
    auto single = [&out](std::string_view name, std::string_view type, std::string_view help,
                         std::uint64_t value) {
        out.append("# HELP ").append(name).append(" ").append(help).append("\n");
        out.append("# TYPE ").append(name).append(" ").append(type).append("\n");
        out.append(name).append(" ").append(std::to_string(value)).append("\n");
    };
    single("wrenn_loops_attached", "gauge", "Template loop devices held by the agent.",
           gauges.loops_attached);
    single("wrenn_tcmu_origins_attached", "gauge", "TCMU origins held by the agent.",
           gauges.tcmu_origins_attached);
    if (gauges.connections) {
        single("wrenn_connections_open", "gauge", "HTTP connections open now.",
               gauges.connections->open);
        single("wrenn_connections_refused_total", "counter",
               "Connections closed at once because their listener held --max-connections.",
               gauges.connections->refused);
    }
    if (gauges.space && gauges.space->known) {
        const SpaceStatus& space = *gauges.space;
        single("wrenn_state_fs_free_bytes", "gauge", "Free space on the state filesystem.",
               space.space.free_bytes);
        single("wrenn_state_fs_size_bytes", "gauge", "Size of the state filesystem.",
               space.space.size_bytes);
        single("wrenn_state_fs_min_free_bytes", "gauge",
               "--min-free on this filesystem: below it, creates and resumes answer 507.",
               space.min_free_bytes);
        single("wrenn_state_fs_critical_free_bytes", "gauge",
               "--critical-free on this filesystem: below it, running sandboxes' I/O is "
               "suspended.",
               space.critical_free_bytes);
    }
    if (gauges.space) {
        single("wrenn_sandboxes_suspended_for_space", "gauge",
               "Running sandboxes whose I/O is suspended until the state filesystem has room "
               "again.",
               gauges.space->suspended);
        single("wrenn_space_suspensions_total", "counter",
               "Times the state filesystem fell below --critical-free.", gauges.space->suspensions);
    }
    out +=
        "# HELP wrenn_sandboxes_io_suspended Running sandboxes whose I/O is held suspended, by "
        "who holds it.\n"
        "# TYPE wrenn_sandboxes_io_suspended gauge\n";
    for (const auto& [reason, count] : gauges.io_suspended_by) {
        out += "wrenn_sandboxes_io_suspended{reason=\"" + reason + "\"} " + std::to_string(count) +
               "\n";
    }
    single("wrenn_sandboxes_io_resume_failing", "gauge",
           "Sandboxes whose device failed to resume; the agent retries every second.",
           gauges.io_resumes_failing);
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
