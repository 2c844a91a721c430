#include "agent/cli/version.hpp"

#include "revision.hpp"  // generated at build time: cmake/revision.cmake

namespace wrenn::agent {

std::string_view version() {
    return WRENN_VERSION;
}

std::string_view revision() {
    return WRENN_REVISION;
}

}  // namespace wrenn::agent
