#pragma once

// A backstore config (and the attach log beside it) opened beneath a folder the operator allowed,
// never through a symlink: the file-system half of the API's check on a TCMU origin, whose pure
// half is origin_policy.hpp.

#include <sys/types.h>

#include <string>

#include "common/error.hpp"
#include "common/result.hpp"
#include "common/unique_fd.hpp"
#include "tcmu/configfs/origin_policy.hpp"

namespace wrenn::tcmu {

// How open_beneath resolves a path: openat2, or the O_NOFOLLOW walk it falls back to where the
// kernel has no openat2 (before 5.6); tests run both.
enum class Resolver { openat2, walk };

// Opens `relative` (no "..", "." or empty component) beneath the folder `dirfd` without
// following a symlink anywhere on the way, O_CLOEXEC | O_NOFOLLOW added to `flags`. Returns the
// fd, or -1 with errno set: ELOOP, EXDEV or ENOTDIR when a symlink (or an escape) was refused.
int open_beneath(int dirfd, const std::string& relative, int flags, mode_t mode,
                 Resolver resolver = Resolver::openat2);

// An open_beneath failure (its errno `code`) as the API should see it: a symlink or an escape
// is a refusal (EACCES); any other errno stays as it is.
Error beneath_error(const std::string& action, int code);

// A backstore config opened beneath an allowed folder (see open_config_beneath).
struct OpenedConfig {
    UniqueFd dir;      // O_PATH of the config's own folder
    UniqueFd file;     // the config, read-only
    std::string name;  // its name in `dir`
};

// Opens <location.dir>/<location.relative> without following a symlink at any level beneath
// location.dir (openat2 with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS; on kernels before 5.6, a
// walk of O_NOFOLLOW opens, one component at a time), and checks that it is a regular file
// owned by `owner_uid` and not writable by group or others. EACCES for a refusal (a symlink, a
// foreign owner, a loose mode, not a regular file), ENOENT when it is missing.
Result<OpenedConfig> open_config_beneath(const ConfigLocation& location, uid_t owner_uid);

// open_config_beneath after locate_config: the file-system half of the API's check.
Result<OpenedConfig> open_allowed_config(const OriginPolicy& policy,
                                         const std::string& config_path);

}  // namespace wrenn::tcmu
