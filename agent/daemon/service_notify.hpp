#pragma once

// Tells systemd how the service is doing (sd_notify(3), libsystemd), for a unit of
// Type=notify: READY=1 once the agent serves, STOPPING=1 when a SIGTERM starts the drain, and a
// STATUS= line that `systemctl status` shows. Outside systemd (no $NOTIFY_SOCKET) each call does
// nothing; a failure to send is logged once at debug and never stops the agent.

#include <chrono>
#include <optional>
#include <string>

namespace wrenn::agent {

void notify_ready(const std::string& status);
void notify_status(const std::string& status);
void notify_stopping(const std::string& status);

// With WatchdogSec= in the unit: how often to send WATCHDOG=1 (half systemd's timeout), or
// nullopt when no watchdog is asked for.
std::optional<std::chrono::microseconds> watchdog_interval();
void notify_watchdog();

}  // namespace wrenn::agent
