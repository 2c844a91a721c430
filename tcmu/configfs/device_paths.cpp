#include "tcmu/configfs/device_paths.hpp"

#include <cerrno>

#include "tcmu/configfs/naming.hpp"

namespace wrenn::tcmu {

namespace {

std::string under(const std::string& root, const std::string& relative) {
    return root + "/" + relative;
}

}  // namespace

DevicePaths::DevicePaths(std::string_view id, const ConfigfsOptions& options)
    : hba(under(options.configfs_root, hba_dir())),
      core(under(options.configfs_root, core_device_dir(id))),
      control(core + "/control"),
      enable(core + "/enable"),
      cmd_time_out(core + "/attrib/cmd_time_out"),
      dev_config(core + "/attrib/dev_config"),
      dev_size(core + "/attrib/dev_size"),
      serial(core + "/wwn/vpd_unit_serial"),
      nl_reply_supported(core + "/attrib/nl_reply_supported"),
      loopback(under(options.configfs_root, loopback_dir())),
      target(under(options.configfs_root, loopback_target_dir(id))),
      tpg(target + "/tpgt_1"),
      lun(tpg + "/lun/lun_0"),
      link(lun + "/" + core_device_name(id)),
      nexus(tpg + "/nexus"),
      address(tpg + "/address") {}

std::string block_dir_for(const ConfigfsOptions& options, const std::string& scsi_address) {
    return options.sys_root + "/class/scsi_device/" + scsi_address + ":0/device/block";
}

std::optional<std::string> disk_name(ConfigfsOps& ops, const DevicePaths& paths,
                                     const ConfigfsOptions& options) {
    auto text = ops.read_file(paths.address);
    if (!text) {
        return std::nullopt;
    }
    auto address = parse_scsi_address(*text);
    if (!address) {
        return std::nullopt;  // no nexus
    }
    auto names = ops.list_dir(block_dir_for(options, *address));
    if (!names || names->empty()) {
        return std::nullopt;
    }
    return names->front();
}

Error invalid_id(std::string_view action, std::string_view id) {
    return Error(std::string(action) + " " + std::string(id), EINVAL,
                 "the id must be 1 to 13 decimal digits");
}

}  // namespace wrenn::tcmu
