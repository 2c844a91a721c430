#pragma once

#include <string>

#include "common/result.hpp"
#include "common/unique_fd.hpp"

namespace wrenn::agent {

// Holds the exclusive flock on <state-dir>/agent.lock for as long as it lives: one agent (serve
// or --cleanup-stale) per state dir. The kernel drops the lock when the descriptor closes, so a
// killed agent never leaves it held. Move-only.
class StateDirLock {
  public:
    static constexpr const char* kFileName = "agent.lock";

    // Creates the state dir if needed, then takes the lock without waiting and writes our pid
    // into the file. EWOULDBLOCK: another process holds it (the message names its pid).
    static Result<StateDirLock> acquire(const std::string& state_dir);

    [[nodiscard]] const std::string& path() const { return path_; }

  private:
    StateDirLock(UniqueFd fd, std::string path) : fd_(std::move(fd)), path_(std::move(path)) {}

    UniqueFd fd_;
    std::string path_;
};

// A short tag naming this state dir among the others on the host: 16 hex digits of a 64-bit
// FNV-1a hash of its canonical path. It goes into every device's dm UUID so that agents with
// different state dirs leave each other's devices alone; it only has to tell apart the state
// dirs of one host, not resist anyone choosing a colliding path.
Result<std::string> state_dir_tag(const std::string& state_dir);
// The same from a canonical path, without touching the filesystem (for tests).
std::string tag_for_canonical_path(const std::string& canonical_path);

}  // namespace wrenn::agent
