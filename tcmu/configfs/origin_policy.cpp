#include "tcmu/configfs/origin_policy.hpp"

#include <cerrno>

namespace wrenn::tcmu {

namespace {

constexpr std::size_t kMaxHandlerBytes = 64;

std::string quoted(std::string_view value) {
    return "\"" + escape_for_log(value) + "\"";
}

// Splits "a/b/c" on '/'; false when a component is empty, "." or "..".
bool plain_components(std::string_view path, std::vector<std::string_view>& out) {
    std::size_t pos = 0;
    for (;;) {
        const auto slash = path.find('/', pos);
        const auto part = path.substr(pos, slash == std::string_view::npos ? slash : slash - pos);
        if (part.empty() || part == "." || part == "..") {
            return false;
        }
        out.push_back(part);
        if (slash == std::string_view::npos) {
            return true;
        }
        pos = slash + 1;
    }
}

bool has_dotdot(std::string_view path) {
    std::size_t pos = 0;
    while (pos <= path.size()) {
        auto slash = path.find('/', pos);
        if (slash == std::string_view::npos) {
            slash = path.size();
        }
        if (path.substr(pos, slash - pos) == "..") {
            return true;
        }
        pos = slash + 1;
    }
    return false;
}

std::string join(const std::vector<std::string>& items) {
    std::string out;
    for (const auto& item : items) {
        out += (out.empty() ? "" : ", ") + item;
    }
    return out;
}

}  // namespace

bool is_valid_handler_name(std::string_view handler) {
    if (handler.empty() || handler.size() > kMaxHandlerBytes) {
        return false;
    }
    for (const char c : handler) {
        const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                        (c >= '0' && c <= '9') || c == '_' || c == '-';
        if (!ok) {
            return false;
        }
    }
    return true;
}

Result<void> check_control_value(std::string_view field, std::string_view value) {
    for (const char c : value) {
        const auto u = static_cast<unsigned char>(c);
        if (c == ',') {
            return Error("check " + std::string(field), EINVAL,
                         "it contains ',', which the kernel reads as the start of another "
                         "configfs option");
        }
        if (u < 0x20 || u == 0x7f) {
            return Error("check " + std::string(field), EINVAL,
                         "it contains a control character (byte " + std::to_string(u) +
                             "); a newline would start another configfs option");
        }
    }
    return success();
}

Result<void> check_dev_config(std::string_view handler, std::string_view config,
                              std::string_view handler_field, std::string_view config_field) {
    if (!is_valid_handler_name(handler)) {
        return Error(
            "check " + std::string(handler_field), EINVAL,
            "a handler name is 1 to 64 letters, digits, '_' or '-', got " + quoted(handler));
    }
    if (config.empty()) {
        return Error("check " + std::string(config_field), EINVAL, "it is empty");
    }
    if (auto r = check_control_value(config_field, config); !r) {
        return r;
    }
    // dev_config is "<handler>/<config>".
    const std::size_t length = handler.size() + 1 + config.size();
    if (length > kMaxDevConfigBytes) {
        return Error("check " + std::string(config_field), EINVAL,
                     "dev_config \"<handler>/<config>\" would be " + std::to_string(length) +
                         " bytes; the kernel keeps " + std::to_string(kMaxDevConfigBytes) +
                         " (TCMU_CONFIG_LEN) and would cut the rest");
    }
    return success();
}

Result<ConfigLocation> locate_config(const OriginPolicy& policy, std::string_view config_path) {
    const std::string action = "allow TCMU config " + quoted(config_path);
    if (policy.config_dirs.empty()) {
        return Error(action, EACCES,
                     "this agent takes no TCMU origins; start it with --tcmu-config-dir DIR to "
                     "allow configs from DIR");
    }
    std::vector<std::string_view> parts;
    if (config_path.empty() || config_path.front() != '/' ||
        !plain_components(config_path.substr(1), parts)) {
        return Error(action, EINVAL,
                     "give an absolute path without '..', '.', '//' or a trailing '/'");
    }
    for (const std::string& dir : policy.config_dirs) {
        const std::string prefix = dir == "/" ? "/" : dir + "/";
        if (config_path.size() > prefix.size() && config_path.starts_with(prefix)) {
            return ConfigLocation{dir, std::string(config_path.substr(prefix.size()))};
        }
    }
    return Error(
        action, EACCES,
        "it is not inside an allowed folder (--tcmu-config-dir: " + join(policy.config_dirs) + ")");
}

Result<void> check_handler(const OriginPolicy& policy, std::string_view handler) {
    for (const std::string& allowed : policy.handlers) {
        if (allowed == handler) {
            return success();
        }
    }
    return Error("allow TCMU handler " + quoted(handler), EACCES,
                 "allowed: " + join(policy.handlers) + " (--tcmu-handler)");
}

Result<ConfigLocation> check_origin_request(const OriginPolicy& policy, std::string_view handler,
                                            std::string_view config_path) {
    if (policy.config_dirs.empty()) {
        return locate_config(policy, config_path).error();  // says which flag allows them
    }
    if (auto r = check_dev_config(handler, config_path, "origin.handler", "origin.config"); !r) {
        return std::move(r).error();
    }
    if (auto r = check_handler(policy, handler); !r) {
        return std::move(r).error();
    }
    return locate_config(policy, config_path);
}

std::string contained_result_file(const std::optional<std::string>& result_file) {
    std::vector<std::string_view> parts;
    if (result_file && !result_file->empty() && result_file->front() != '/' &&
        plain_components(*result_file, parts)) {
        return *result_file;
    }
    return "init-debug.log";
}

std::string escape_for_log(std::string_view value) {
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out;
    out.reserve(value.size());
    for (const char c : value) {
        const auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u == 0x7f || c == '\\') {
            out += "\\x";
            out += kHex[u >> 4];
            out += kHex[u & 0xf];
        } else {
            out += c;
        }
    }
    return out;
}

Result<std::string> normalize_config_dir(std::string_view dir) {
    std::string out(dir);
    while (out.size() > 1 && out.back() == '/') {
        out.pop_back();
    }
    std::vector<std::string_view> parts;
    if (out.empty() || out.front() != '/' ||
        (out != "/" && !plain_components(std::string_view(out).substr(1), parts)) ||
        has_dotdot(out)) {
        return Error("--tcmu-config-dir " + quoted(dir), EINVAL,
                     "give an absolute folder path without '..', '.' or '//'");
    }
    return out;
}

}  // namespace wrenn::tcmu
