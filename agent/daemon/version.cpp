#include "agent/daemon/version.hpp"

namespace wrenn::agent {

std::string_view version() {
    return WRENN_VERSION;
}

}  // namespace wrenn::agent
