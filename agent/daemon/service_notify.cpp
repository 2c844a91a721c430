#include "agent/daemon/service_notify.hpp"

#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>

#include <cstdint>
#include <cstring>

namespace wrenn::agent {

namespace {

void notify(const std::string& state) {
    const int sent = ::sd_notify(0, state.c_str());
    if (sent < 0) {
        spdlog::debug("sd_notify: {}", std::strerror(-sent));
    }
}

// A STATUS= value is one line.
std::string one_line(std::string text) {
    for (char& c : text) {
        if (c == '\n' || c == '\r') {
            c = ' ';
        }
    }
    return text;
}

}  // namespace

void notify_ready(const std::string& status) {
    notify("READY=1\nSTATUS=" + one_line(status));
}

void notify_status(const std::string& status) {
    notify("STATUS=" + one_line(status));
}

void notify_stopping(const std::string& status) {
    notify("STOPPING=1\nSTATUS=" + one_line(status));
}

std::optional<std::chrono::microseconds> watchdog_interval() {
    std::uint64_t usec = 0;
    if (::sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) {
        return std::nullopt;
    }
    return std::chrono::microseconds(usec / 2);
}

void notify_watchdog() {
    notify("WATCHDOG=1");
}

}  // namespace wrenn::agent
