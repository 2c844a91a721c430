#pragma once

// The log of one attach: what it did step by step, and why it failed, for the debug log and for
// overlaybd's result file (where overlaybd's snapshotter looks when a device fails to come up).

#include <string>
#include <vector>

#include "tcmu/device/attach_request.hpp"

namespace wrenn::tcmu {

// Owns the lines of one attach; each goes to the debug log as it is added.
class AttachLog {
  public:
    void add(std::string line);
    [[nodiscard]] const std::vector<std::string>& lines() const { return lines_; }

    // The lines as the result file gets them, each "wrenn tcmu attach <id>: <line>\n" with every
    // value escaped (escape_for_log), so a config path or an error text cannot end a line or
    // forge one.
    [[nodiscard]] std::string text(const std::string& id) const;

    // Appends text(req.id) to the result file of req's config, for the overlaybd handler only
    // (only its configs name one). For the operator's CLI this is overlaybd-attacher's rule
    // (result_file_for_config: absolute paths and symlinks allowed, as its caller is root). For
    // an API attach (req.api_policy) it is contained_result_file beneath the config's own
    // folder, opened through that folder without following symlinks, created 0600, and only
    // if it is a regular file with one link (a hard link could point anywhere). Best effort:
    // failing to write it is logged, never an attach failure.
    void append_to_result_file(const AttachRequest& req) const;

  private:
    std::vector<std::string> lines_;
};

}  // namespace wrenn::tcmu
