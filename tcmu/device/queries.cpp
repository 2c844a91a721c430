#include "tcmu/device/queries.hpp"

#include <algorithm>
#include <cerrno>
#include <charconv>

#include "tcmu/configfs/naming.hpp"

namespace wrenn::tcmu {

Result<void> DeviceQueries::check_attached(std::string_view id,
                                           const DeviceIdentity& expected) const {
    const std::string action = "check tcmu device " + std::string(id);
    if (!is_valid_id(id)) {
        return invalid_id("check tcmu device", id);
    }
    const DevicePaths paths(id, options_);
    auto text = ops_.read_file(paths.dev_config);
    if (!text) {
        return std::move(text).error().within(action);
    }
    const std::string want = dev_config_for(expected.handler, expected.config_path);
    const std::string have = trim_attribute(*text);
    if (have != want) {
        return Error(action, EEXIST,
                     "its dev_config is \"" + escape_for_log(have) + "\" but this origin's is \"" +
                         escape_for_log(want) +
                         "\"; the id belongs to another device, which is left alone");
    }
    if (expected.size_bytes) {
        auto size = ops_.read_file(paths.core + "/attrib/dev_size");
        if (!size) {
            return std::move(size).error().within(action);
        }
        const std::string have_size = trim_attribute(*size);
        if (have_size != std::to_string(*expected.size_bytes)) {
            return Error(action, EEXIST,
                         "its dev_size is " + escape_for_log(have_size) + " but this origin's is " +
                             std::to_string(*expected.size_bytes) +
                             "; the id belongs to another device, which is left alone");
        }
    }
    return success();
}

Result<ExistingDevice> DeviceQueries::inspect_existing(std::string_view id) const {
    const std::string action = "inspect tcmu device " + std::string(id);
    if (!is_valid_id(id)) {
        return invalid_id("inspect tcmu device", id);
    }
    const DevicePaths paths(id, options_);
    ExistingDevice out;
    auto config = ops_.read_file(paths.dev_config);
    if (!config) {
        return std::move(config).error().within(action);
    }
    out.dev_config = trim_attribute(*config);
    auto size = ops_.read_file(paths.dev_size);
    if (!size) {
        return std::move(size).error().within(action);
    }
    const std::string size_text = trim_attribute(*size);
    const auto parsed =
        std::from_chars(size_text.data(), size_text.data() + size_text.size(), out.dev_size);
    if (parsed.ec != std::errc() || parsed.ptr != size_text.data() + size_text.size()) {
        return Error(action, EINVAL,
                     paths.dev_size + " reads \"" + escape_for_log(size_text) + "\"");
    }
    auto serial = attached_serial(id);
    if (!serial) {
        return std::move(serial).error().within(action);
    }
    out.serial = std::move(serial).value();
    auto enable = ops_.read_file(paths.enable);
    if (!enable) {
        return std::move(enable).error().within(action);
    }
    out.enabled = trim_attribute(*enable) == "1";
    out.exported = ops_.exists(paths.link);
    if (out.exported) {
        auto disk = disk_name(ops_, paths, options_);
        out.disk = disk && ops_.exists(options_.dev_root + "/" + *disk);
    }
    return out;
}

Result<std::string> DeviceQueries::attached_serial(std::string_view id) const {
    if (!is_valid_id(id)) {
        return invalid_id("read serial of tcmu device", id);
    }
    auto text = ops_.read_file(DevicePaths(id, options_).serial);
    if (!text) {
        return std::move(text).error().within("read serial of tcmu device " + std::string(id));
    }
    return parse_unit_serial(*text);
}

Result<std::optional<std::string>> DeviceQueries::find_attached(std::string_view id) const {
    if (!is_valid_id(id)) {
        return invalid_id("find tcmu device", id);
    }
    const DevicePaths paths(id, options_);
    const std::optional<std::string> none;
    if (!ops_.exists(paths.core) || !ops_.exists(paths.link)) {
        return none;
    }
    auto disk = disk_name(ops_, paths, options_);
    if (!disk) {
        return none;
    }
    std::string dev = options_.dev_root + "/" + *disk;
    if (!ops_.exists(dev)) {
        return none;
    }
    return std::optional<std::string>(dev);
}

Result<std::vector<std::string>> DeviceQueries::list_attached() const {
    auto names = ops_.list_dir(options_.configfs_root + "/" + hba_dir());
    if (!names) {
        if (names.error().code() == ENOENT) {
            return std::vector<std::string>{};  // no device was ever made
        }
        return std::move(names).error().within("list tcmu devices");
    }
    std::vector<std::string> ids;
    for (const std::string& name : *names) {
        if (name.rfind("dev_", 0) == 0 && is_valid_id(std::string_view(name).substr(4))) {
            ids.push_back(name.substr(4));
        }
    }
    std::sort(ids.begin(), ids.end());
    return ids;
}

Result<std::string> DeviceQueries::attached_config(std::string_view id) const {
    const std::string action = "read config of tcmu device " + std::string(id);
    if (!is_valid_id(id)) {
        return invalid_id("read config of tcmu device", id);
    }
    const DevicePaths paths(id, options_);
    auto text = ops_.read_file(paths.dev_config);
    if (!text) {
        return std::move(text).error().within(action);
    }
    auto config = config_from_dev_config(*text);
    if (!config) {
        return std::move(config).error().within(action);
    }
    return config;
}

Result<std::uint64_t> DeviceQueries::disk_size(const std::string& disk) const {
    const std::string name = disk.substr(disk.rfind('/') + 1);
    const std::string path = options_.sys_root + "/class/block/" + name + "/size";
    const std::string action = "read size of " + disk;
    auto text = ops_.read_file(path);
    if (!text) {
        return Error(action, text.error().code(), path);
    }
    const std::string sectors_text = trim_attribute(*text);
    std::uint64_t sectors = 0;
    const auto parsed =
        std::from_chars(sectors_text.data(), sectors_text.data() + sectors_text.size(), sectors);
    if (parsed.ec != std::errc() || parsed.ptr == sectors_text.data()) {
        return Error(action, EIO, path);
    }
    return sectors * 512;
}

}  // namespace wrenn::tcmu
