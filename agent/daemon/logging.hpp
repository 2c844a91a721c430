#pragma once

#include <string>

#include "common/result.hpp"

namespace wrenn::agent {

// Sets up spdlog on stderr: level by name, and "text" (human lines) or "json" (one object per
// line, for journald or a log shipper).
Result<void> setup_logging(const std::string& level, const std::string& format);

// A JSON string literal for `text`, with quotes, backslashes and control bytes escaped.
std::string json_quote(std::string_view text);

}  // namespace wrenn::agent
