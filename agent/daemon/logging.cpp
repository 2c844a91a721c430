#include "agent/daemon/logging.hpp"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <boost/json.hpp>
#include <cstdio>
#include <ctime>

#include "agent/state/sandbox.hpp"

namespace wrenn::agent {

namespace {

// Formats a log record as {"time": ..., "level": ..., "msg": ...}.
class JsonFormatter final : public spdlog::formatter {
  public:
    void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
        const std::string stamp = format_utc(msg.time);
        const auto level = spdlog::level::to_string_view(msg.level);
        std::string line = "{\"time\":\"";
        line += stamp;
        line += "\",\"level\":\"";
        line.append(level.data(), level.size());
        line += "\",\"msg\":";
        line += json_quote(std::string_view(msg.payload.data(), msg.payload.size()));
        line += "}\n";
        dest.append(line.data(), line.data() + line.size());
    }
    [[nodiscard]] std::unique_ptr<spdlog::formatter> clone() const override {
        return std::make_unique<JsonFormatter>();
    }
};

}  // namespace

std::string json_quote(std::string_view text) {
    return boost::json::serialize(boost::json::string_view(text.data(), text.size()));
}

Result<void> setup_logging(const std::string& level, const std::string& format) {
    const auto parsed = spdlog::level::from_str(level);
    if (parsed == spdlog::level::off && level != "off") {
        return Error("set log level", EINVAL,
                     "'" + level + "' is not one of trace, debug, info, warn, error, off");
    }
    auto logger = spdlog::stderr_logger_mt("wrenn-agent");
    if (format == "json") {
        logger->set_formatter(std::make_unique<JsonFormatter>());
    } else {
        logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
    }
    logger->set_level(parsed);
    logger->flush_on(spdlog::level::info);
    spdlog::set_default_logger(logger);
    return success();
}

}  // namespace wrenn::agent
