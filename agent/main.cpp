#include <cstdio>

#include "agent/version.hpp"

int main() {
    std::printf("wrenn-agent %.*s\n", static_cast<int>(wrenn::agent::version().size()),
                wrenn::agent::version().data());
    return 0;
}
