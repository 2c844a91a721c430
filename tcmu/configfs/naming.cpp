#include "tcmu/configfs/naming.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <cerrno>
#include <filesystem>

#include "common/digest.hpp"
#include "common/file.hpp"
#include "common/unique_fd.hpp"

namespace wrenn::tcmu {

namespace {

constexpr std::size_t kIdDigits = 13;

bool all_digits(std::string_view s) {
    for (char c : s) {
        if (c < '0' || c > '9') {
            return false;
        }
    }
    return true;
}

}  // namespace

bool is_valid_id(std::string_view id) {
    return !id.empty() && id.size() <= kIdDigits && all_digits(id);
}

std::string wwn_for_id(std::string_view id) {
    std::string out = "naa.199";
    if (id.size() < kIdDigits) {
        out.append(kIdDigits - id.size(), '0');
    }
    out += id;
    return out;
}

std::string hba_dir() {
    return "target/core/user_" + std::to_string(kDefaultHba);
}

std::string core_device_name(std::string_view id) {
    return "dev_" + std::string(id);
}

std::string core_device_dir(std::string_view id) {
    return hba_dir() + "/" + core_device_name(id);
}

std::string loopback_dir() {
    return "target/loopback";
}

std::string loopback_target_dir(std::string_view id) {
    return loopback_dir() + "/" + wwn_for_id(id);
}

std::string owner_serial(std::string_view tag, std::string_view id) {
    return "WRENN-TCMU-" + std::string(tag) + "-" + std::string(id);
}

bool is_valid_serial(std::string_view serial) {
    if (serial.empty() || serial.size() > 253) {
        return false;
    }
    for (char c : serial) {
        const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                        (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
        if (!ok) {
            return false;
        }
    }
    return true;
}

std::string parse_unit_serial(std::string_view text) {
    // target_wwn_vpd_unit_serial_show: "T10 VPD Unit Serial Number: %s\n".
    constexpr std::string_view kLabel = "T10 VPD Unit Serial Number:";
    if (text.substr(0, kLabel.size()) == kLabel) {
        text.remove_prefix(kLabel.size());
    }
    while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) {
        text.remove_prefix(1);
    }
    while (!text.empty() && (text.back() == '\n' || text.back() == '\0' || text.back() == ' ')) {
        text.remove_suffix(1);
    }
    return std::string(text);
}

std::string_view backstore_for_handler(std::string_view handler) {
    return handler == "overlaybd" ? "overlaybd-tcmu" : "tcmu-runner";
}

std::string origin_spec_bytes(std::string_view handler, std::string_view config_path,
                              std::optional<std::uint64_t> size_bytes) {
    const std::string size = size_bytes ? std::to_string(*size_bytes) : std::string();
    std::string out = "wrenn tcmu origin v1\n";
    for (const auto& [name, value] :
         {std::pair<std::string_view, std::string_view>{"handler", handler},
          {"config", config_path},
          {"size", size}}) {
        out.append(name);
        out += '=';
        out += std::to_string(value.size());
        out += ':';
        out.append(value);
        out += '\n';
    }
    return out;
}

// The id used to be FNV-1a of the config path mod 10^12. FNV is not one-way: a path with any
// chosen id can be computed directly, so one caller could aim at another's device. SHA-256 is
// one-way, so hitting a given id now takes brute force: about 10^12 specs hashed per target id
// (12 digits are 40 bits; the first 64 bits of the digest reduced mod 10^12 are uniform to
// within 2^-24), and even an accidental collision between two live origins needs about 10^6 of
// them (the birthday bound). That is not out of reach of a determined attacker with a GPU, so
// the id is not what keeps disks apart: before any attached id is reused or detached, its
// dev_config (and dev_size) is read back from configfs and must equal what this spec writes
// (DeviceQueries::check_attached). A collision therefore ends in an error naming both specs,
// never in one caller getting another's disk.
std::string id_for_origin(std::string_view handler, std::string_view config_path,
                          std::optional<std::uint64_t> size_bytes) {
    const auto digest = [&] {
        Sha256 hash;
        hash.update(origin_spec_bytes(handler, config_path, size_bytes));
        return hash.digest();
    }();
    std::uint64_t first = 0;
    for (std::size_t i = 0; i < 8; ++i) {
        first = (first << 8) | digest[i];
    }
    // 12 digits fit the WWN's 13 with room; 0 is avoided so an id never reads as "unset".
    std::uint64_t id = first % 1000000000000ULL;
    if (id == 0) {
        id = 1;
    }
    return std::to_string(id);
}

std::string legacy_id_for_config(std::string_view config_path) {
    std::uint64_t hash = 14695981039346656037ULL;  // FNV-1a 64 offset basis
    for (char c : config_path) {
        hash ^= static_cast<unsigned char>(c);
        hash *= 1099511628211ULL;  // FNV-1a 64 prime
    }
    std::uint64_t id = hash % 1000000000000ULL;
    if (id == 0) {
        id = 1;
    }
    return std::to_string(id);
}

std::string dev_config_for(std::string_view handler, std::string_view config_path) {
    std::string out(handler);
    out += '/';
    out += config_path;
    return out;
}

Result<std::string> config_from_dev_config(std::string_view dev_config) {
    while (!dev_config.empty() && (dev_config.back() == '\n' || dev_config.back() == '\0')) {
        dev_config.remove_suffix(1);
    }
    auto slash = dev_config.find('/');
    if (slash == std::string_view::npos || slash == 0 || slash + 1 == dev_config.size()) {
        return Error("parse dev_config", EINVAL,
                     "expected <handler>/<config>, got \"" + std::string(dev_config) + "\"");
    }
    return std::string(dev_config.substr(slash + 1));
}

Result<std::string> parse_scsi_address(std::string_view text) {
    while (!text.empty() && (text.back() == '\n' || text.back() == ' ' || text.back() == '\0')) {
        text.remove_suffix(1);
    }
    int colons = 0;
    bool ok = !text.empty() && text.front() != ':' && text.back() != ':';
    for (std::size_t i = 0; ok && i < text.size(); ++i) {
        if (text[i] == ':') {
            ok = text[i - 1] != ':';
            ++colons;
        } else if (text[i] < '0' || text[i] > '9') {
            ok = false;
        }
    }
    if (!ok || colons != 2) {
        return Error("parse scsi address", EINVAL,
                     "expected H:C:T, got \"" + std::string(text) + "\"");
    }
    return std::string(text);
}

Result<std::optional<std::string>> result_file_field(std::string_view config_text) {
    boost::system::error_code ec;
    boost::json::value doc = boost::json::parse(config_text, ec);
    if (ec || !doc.is_object()) {
        return Error("find resultFile", EINVAL,
                     ec ? "not JSON: " + ec.message() : "not a JSON object");
    }
    const boost::json::value* result = doc.as_object().if_contains("resultFile");
    if (result == nullptr || (result->is_string() && result->as_string().empty())) {
        return std::optional<std::string>();
    }
    if (!result->is_string()) {
        return Error("find resultFile", EINVAL, "resultFile is not a string");
    }
    return std::optional<std::string>(std::string(result->as_string()));
}

Result<std::string> result_file_for_config(const std::string& config_path) {
    auto text = read_file(config_path, 1U << 20);  // an overlaybd config is far smaller
    if (!text) {
        return std::move(text).error().within("find resultFile of " + config_path);
    }
    auto field = result_file_field(*text);
    if (!field) {
        return Error("find resultFile of " + config_path, field.error().code(),
                     field.error().detail());
    }
    std::filesystem::path dir = std::filesystem::path(config_path).parent_path();
    if (!field->has_value()) {
        return (dir / "init-debug.log").string();
    }
    std::filesystem::path file(**field);
    if (file.is_absolute()) {
        return file.string();
    }
    return (dir / file).string();
}

}  // namespace wrenn::tcmu
