#pragma once

// The agent's offline command: flatten --origin FILE --cow FILE --out FILE.

#include <ostream>
#include <string>
#include <vector>

namespace wrenn::flatten {

// args: the command's arguments, with or without a leading "flatten". Prints a one-line
// summary to out and returns 0; on error prints one clear line to err and returns 1
// (2 for a usage error).
int run_cli(std::vector<std::string> args, std::ostream& out, std::ostream& err);

}  // namespace wrenn::flatten
