#pragma once

// Which TCMU origins a caller of the agent's API may ask for, and which values may be written
// into configfs at all. Pure functions over strings (the file-system side, which opens the
// config without following symlinks, is open_config_beneath in config_file.hpp). Errors carry
// EINVAL for a malformed value (the API answers 400) and EACCES for a refusal by policy (403).

#include <sys/types.h>

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.hpp"

namespace wrenn::tcmu {

// The longest dev_config value the kernel keeps whole. drivers/target/target_core_user.c keeps
// it in `char dev_config[TCMU_CONFIG_LEN]` with TCMU_CONFIG_LEN 256, and
// tcmu_set_configfs_dev_params copies "dev_config=<value>" with
// match_strlcpy(udev->dev_config, &args[0], TCMU_CONFIG_LEN): 255 bytes and the NUL; anything
// longer is cut without an error (and the backstore would open a different path).
inline constexpr std::size_t kMaxDevConfigBytes = 255;

// A handler name as tcmu-runner and overlaybd register them ("overlaybd", "qcow", "file"):
// letters, digits, '_' and '-', 1 to 64 of them.
bool is_valid_handler_name(std::string_view handler);

// A value bound for a configfs control write. tcmu_set_configfs_dev_params splits the write on
// ',' and '\n' (strsep(&opts, ",\n")), so either would smuggle in more options; other control
// bytes (and DEL) have no place in a path or a name. EINVAL naming `field` otherwise.
Result<void> check_control_value(std::string_view field, std::string_view value);

// What attach writes as "dev_config=<handler>/<config>": a valid handler name, a config without
// the bytes above, the whole within kMaxDevConfigBytes. The fields are named in the error as
// given (the API passes "origin.handler" and "origin.config").
Result<void> check_dev_config(std::string_view handler, std::string_view config,
                              std::string_view handler_field = "handler",
                              std::string_view config_field = "config");

// The API's allowlist (wrenn-agent serve --tcmu-config-dir, --tcmu-handler).
struct OriginPolicy {
    std::vector<std::string> config_dirs;            // absolute; none: TCMU origins refused
    std::vector<std::string> handlers{"overlaybd"};  // allowed handler names
    uid_t owner_uid = 0;  // who must own a config (root; tests pass their own uid)
};

// Where an allowed config lies: one of the policy's folders and the path beneath it.
struct ConfigLocation {
    std::string dir;       // as configured, without a trailing '/'
    std::string relative;  // "a/config.v1.json": no "..", ".", empty component or leading '/'
};

// The folder of `policy` that lexically holds `config_path`. EACCES when no folder is
// configured or none holds it; EINVAL when the path is not absolute or has "..", "." or empty
// components (a config is named by its one plain path, which is also what dev_config says).
Result<ConfigLocation> locate_config(const OriginPolicy& policy, std::string_view config_path);

// EACCES unless `handler` is one of the policy's, naming those that are.
Result<void> check_handler(const OriginPolicy& policy, std::string_view handler);

// Everything about an API origin that needs no file: handler allowed, values fit configfs,
// config under an allowed folder. The first problem found, EINVAL or EACCES.
Result<ConfigLocation> check_origin_request(const OriginPolicy& policy, std::string_view handler,
                                            std::string_view config_path);

// The file an API attach may log to, relative to the config's folder: the config's resultFile
// when it is relative without "..", "." or empty components, else "init-debug.log" (where
// overlaybd logs by default). Opening it without following symlinks is the caller's job.
std::string contained_result_file(const std::optional<std::string>& result_file);

// `value` with '\\', control bytes and DEL written as \xNN, so that text echoed into a log line
// cannot end the line or forge another.
std::string escape_for_log(std::string_view value);

// Checks --tcmu-config-dir values at start: absolute, no "..", "." or empty components.
Result<std::string> normalize_config_dir(std::string_view dir);

}  // namespace wrenn::tcmu
