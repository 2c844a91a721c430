#pragma once

// Opening a template image the way the agent trusts it: never through a symlink, only a regular
// file owned by the expected user (root) that others cannot write, and known from then on by
// the descriptor, not the path.

#include <sys/types.h>

#include <string>

#include "agent/state/sandbox.hpp"
#include "common/result.hpp"
#include "common/unique_fd.hpp"

namespace wrenn::agent {

// An open, checked template image and what it was when opened (no digest yet).
struct TemplateImage {
    UniqueFd fd;
    TemplateIdentity identity;
};

// Opens `path` read-only with O_NOFOLLOW (a symlink as the last component is ELOOP) and checks
// the open file: regular (EINVAL), owned by `owner` (EPERM), not writable by others (EPERM).
// Every error names the path and says what to change.
Result<TemplateImage> open_template(const std::string& path, uid_t owner);

// What the file open as fd is now (fstat); `path` names it in errors.
Result<TemplateIdentity> inspect_open_template(int fd, const std::string& path);

// open_template, then ESTALE unless the file is `expected` in exactly that state (device, inode,
// size, mtime, ctime): what a digest is computed from, so that it is attributed to one version.
Result<TemplateImage> open_template_version(const std::string& path, uid_t owner,
                                            const TemplateIdentity& expected);

}  // namespace wrenn::agent
