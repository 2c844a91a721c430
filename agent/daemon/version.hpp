#pragma once

#include <string_view>

namespace wrenn::agent {

std::string_view version();

}  // namespace wrenn::agent
