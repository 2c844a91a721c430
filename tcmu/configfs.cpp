#include "tcmu/configfs.hpp"

#include <utility>

namespace wrenn::tcmu {

Configfs::Configfs(ConfigfsOptions options) : Configfs(real_configfs_ops(), std::move(options)) {}

Configfs::Configfs(ConfigfsOps& ops, ConfigfsOptions options)
    : ops_(&ops), options_(std::move(options)) {}

Result<std::string> Configfs::attach(const AttachRequest& req) {
    return Attacher(*ops_, options_).attach(req);
}

Result<void> Configfs::detach(std::string_view id, const std::optional<DeviceIdentity>& expected) {
    return Detacher(*ops_, options_).detach(id, expected);
}

Result<UnusedDetached> Configfs::detach_unused(std::string_view tag,
                                               const std::vector<std::string>& in_use) {
    return Detacher(*ops_, options_).detach_unused(tag, in_use);
}

Result<std::optional<std::string>> Configfs::find_attached(std::string_view id) const {
    return queries().find_attached(id);
}

Result<std::vector<std::string>> Configfs::list_attached() const {
    return queries().list_attached();
}

Result<std::string> Configfs::attached_config(std::string_view id) const {
    return queries().attached_config(id);
}

Result<std::string> Configfs::attached_serial(std::string_view id) const {
    return queries().attached_serial(id);
}

Result<void> Configfs::check_attached(std::string_view id, const DeviceIdentity& expected) const {
    return queries().check_attached(id, expected);
}

Result<ExistingDevice> Configfs::inspect_existing(std::string_view id) const {
    return queries().inspect_existing(id);
}

Result<std::uint64_t> Configfs::disk_size(const std::string& disk) const {
    return queries().disk_size(disk);
}

}  // namespace wrenn::tcmu
