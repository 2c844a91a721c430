#include "agent/daemon/service_status.hpp"

#include <boost/asio/dispatch.hpp>

#include "agent/daemon/service_notify.hpp"

namespace wrenn::agent {

namespace {

std::size_t count(const ServiceFacts& facts, const char* state) {
    const auto it = facts.states.find(state);
    return it == facts.states.end() ? 0 : it->second;
}

}  // namespace

std::string service_status_text(const ServiceFacts& facts) {
    std::string text = "serving on " + facts.addresses + "; " +
                       std::to_string(count(facts, "running")) + " running, " +
                       std::to_string(count(facts, "paused")) + " paused";
    if (facts.space.known && facts.space.degraded()) {
        text += "; space degraded: " + human_bytes(facts.space.space.free_bytes) + " free";
        if (facts.space.suspended > 0) {
            text += ", " + std::to_string(facts.space.suspended) + " suspended";
        }
    }
    return text;
}

ServiceStatus::ServiceStatus(boost::asio::io_context& ioc, Facts facts,
                             std::chrono::milliseconds every)
    : strand_(boost::asio::make_strand(ioc)),
      timer_(strand_),
      facts_(std::move(facts)),
      every_(every) {}

void ServiceStatus::start() {
    boost::asio::dispatch(strand_, [this] {
        sent_ = service_status_text(facts_());
        notify_ready(sent_);
        wait();
    });
}

void ServiceStatus::stop() {
    boost::asio::dispatch(strand_, [this] {
        stopped_ = true;
        timer_.cancel();
    });
}

void ServiceStatus::wait() {
    timer_.expires_after(every_);
    timer_.async_wait([this](const boost::system::error_code& ec) {
        if (ec || stopped_) {
            return;
        }
        if (std::string now = service_status_text(facts_()); now != sent_) {
            notify_status(now);
            sent_ = std::move(now);
        }
        wait();
    });
}

}  // namespace wrenn::agent
