#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <chrono>
#include <functional>
#include <map>
#include <string>

#include "agent/platform/space.hpp"

namespace wrenn::agent {

// The STATUS= line `systemctl status wrenn-agent` shows while the agent serves, kept current:
//   serving on unix:/run/wrenn/agent.sock; 12 running, 3 paused
//   serving on ...; 12 running, 3 paused; space degraded: 2.1 GiB free, 4 suspended
// Each tick (every `every`) composes it and sends it when it changed.
struct ServiceFacts {
    std::string addresses;
    std::map<std::string, std::size_t> states;  // sandboxes by state
    SpaceStatus space;                          // known == false: not watched
};
std::string service_status_text(const ServiceFacts& facts);

class ServiceStatus {
  public:
    using Facts = std::function<ServiceFacts()>;
    ServiceStatus(boost::asio::io_context& ioc, Facts facts, std::chrono::milliseconds every);
    // Sends READY=1 with the first status line, then keeps the line current until stop().
    // Both may be called from any thread of the io_context.
    void start();
    void stop();

  private:
    void wait();

    boost::asio::strand<boost::asio::io_context::executor_type> strand_;
    boost::asio::steady_timer timer_;
    bool stopped_ = false;
    Facts facts_;
    std::chrono::milliseconds every_;
    std::string sent_;
};

}  // namespace wrenn::agent
