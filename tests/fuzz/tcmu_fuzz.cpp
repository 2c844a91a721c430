// libFuzzer target over what the API's TCMU allowlist reads from callers and from config files:
// the resultFile field of a config (tcmu::result_file_field, then contained_result_file), the
// configfs value checks (check_control_value, check_dev_config), the allowlist's path rule
// (locate_config) and the log escaping. The first byte picks the function; the rest is the
// input. Beyond "no crash, no UB", each promise the API relies on is checked on every input.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

#include "tcmu/configfs/naming.hpp"
#include "tcmu/configfs/origin_policy.hpp"

namespace {

[[noreturn]] void fail(const std::string& what, std::string_view input) {
    std::fprintf(stderr, "tcmu_fuzz: %s (input \"%s\")\n", what.c_str(),
                 wrenn::tcmu::escape_for_log(input).c_str());
    std::abort();
}

bool has_component(std::string_view path, std::string_view name) {
    std::size_t pos = 0;
    while (pos <= path.size()) {
        auto slash = path.find('/', pos);
        if (slash == std::string_view::npos) {
            slash = path.size();
        }
        if (path.substr(pos, slash - pos) == name) {
            return true;
        }
        pos = slash + 1;
    }
    return false;
}

bool configfs_safe(std::string_view value) {
    for (const char c : value) {
        const auto u = static_cast<unsigned char>(c);
        if (c == ',' || u < 0x20 || u == 0x7f) {
            return false;
        }
    }
    return true;
}

// A resultFile from config text never leads the log out of the config's folder.
void result_file(std::string_view text) {
    auto field = wrenn::tcmu::result_file_field(text);
    if (!field) {
        (void)field.error().message();
        return;
    }
    const std::string name = wrenn::tcmu::contained_result_file(*field);
    if (name.empty() || name.front() == '/' || has_component(name, "..") ||
        has_component(name, ".") || has_component(name, "")) {
        fail("contained_result_file gave \"" + wrenn::tcmu::escape_for_log(name) + "\"", text);
    }
}

// What passes the checks can be written to configfs whole, as one option.
void dev_config(std::string_view text) {
    const auto split = text.find('/');
    const std::string_view handler = text.substr(0, split);
    const std::string_view config =
        split == std::string_view::npos ? std::string_view() : text.substr(split);
    const bool value_ok = wrenn::tcmu::check_control_value("v", text).ok();
    if (value_ok != configfs_safe(text)) {
        fail("check_control_value disagrees with the kernel's separators", text);
    }
    auto r = wrenn::tcmu::check_dev_config(handler, config);
    if (!r) {
        (void)r.error().message();
        return;
    }
    const std::string value = wrenn::tcmu::dev_config_for(handler, config);
    if (!configfs_safe(value) || value.size() > wrenn::tcmu::kMaxDevConfigBytes ||
        !wrenn::tcmu::is_valid_handler_name(handler)) {
        fail("check_dev_config let through \"" + wrenn::tcmu::escape_for_log(value) + "\"", text);
    }
    const std::string id = wrenn::tcmu::id_for_origin(handler, config, value.size());
    if (!wrenn::tcmu::is_valid_id(id) || id.size() > 12) {
        fail("id_for_origin gave \"" + id + "\"", text);
    }
}

// An allowed path lies beneath an allowed folder, by plain components.
void locate(std::string_view text) {
    wrenn::tcmu::OriginPolicy policy;
    policy.config_dirs = {"/srv/obd", "/"};
    auto located = wrenn::tcmu::locate_config(policy, text);
    if (!located) {
        (void)located.error().message();
        return;
    }
    const std::string joined =
        (located->dir == "/" ? std::string() : located->dir) + "/" + located->relative;
    if (joined != text || located->relative.empty() || has_component(located->relative, "..") ||
        has_component(located->relative, ".") || has_component(located->relative, "")) {
        fail("locate_config gave " + located->dir + " + " + located->relative, text);
    }
}

// Escaped text holds no byte that could end or forge a log line.
void escape(std::string_view text) {
    const std::string out = wrenn::tcmu::escape_for_log(text);
    for (const char c : out) {
        const auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u == 0x7f) {
            fail("escape_for_log left a control byte", text);
        }
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) {
        return 0;
    }
    const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
    switch (data[0] % 4) {
        case 0:
            result_file(text);
            break;
        case 1:
            dev_config(text);
            break;
        case 2:
            locate(text);
            break;
        default:
            escape(text);
            break;
    }
    return 0;
}
