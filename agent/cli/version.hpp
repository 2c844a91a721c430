#pragma once

#include <string_view>

namespace wrenn::agent {

// The release ("0.1.0"), from CMake's project().
std::string_view version();
// The source revision it was built from: `git describe --always --dirty` at build time
// ("8e125ae4f1c2", "8e125ae4f1c2-dirty"), $WRENN_REVISION when a packager sets it, or "unknown".
std::string_view revision();

}  // namespace wrenn::agent
