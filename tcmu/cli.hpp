#pragma once

// `wrenn-agent tcmu attach|detach`: the command-line face of tcmu::Configfs.

#include <iosfwd>
#include <string>
#include <vector>

#include "tcmu/configfs.hpp"

namespace wrenn::tcmu {

// args: the words after "tcmu", e.g. {"attach", "--id", "7", "--config", "/x/config.v1.json"}.
//   attach --id ID --config FILE [--handler NAME] [--size BYTES] [-v]   prints /dev/sdX
//   detach --id ID [-v]
// Without --id, attach uses id_for_origin(handler, FILE, size), so attaching the same origin again
// finds the same device. The values go through check_dev_config (no ',', newline or control
// character, within the kernel's 255 bytes); the result file follows overlaybd-attacher's rule.
// Also `--help`. Returns 0 on success; on failure writes the reason to err and returns 1 (2 for a
// usage error). -v raises the spdlog level to debug.
int run_cli(std::vector<std::string> args, std::ostream& out, std::ostream& err);

// The same over a given Configfs (tests use one over a fake ConfigfsOps).
int run_cli(std::vector<std::string> args, std::ostream& out, std::ostream& err,
            Configfs& configfs);

}  // namespace wrenn::tcmu
