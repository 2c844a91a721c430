// OriginDevices over the kernel's configfs: each call is the Configfs call of the same name.
#include "tcmu/configfs.hpp"
#include "tcmu/origin_registry.hpp"

namespace wrenn::tcmu {

namespace {

class ConfigfsOriginDevices final : public OriginDevices {
  public:
    Result<std::optional<std::string>> find(std::string_view id) override {
        return configfs_.find_attached(id);
    }
    Result<void> check(std::string_view id, const DeviceIdentity& origin) override {
        return configfs_.check_attached(id, origin);
    }
    Result<std::string> attach(const AttachRequest& request) override {
        return configfs_.attach(request);
    }
    Result<void> detach(std::string_view id, const DeviceIdentity& origin) override {
        return configfs_.detach(id, origin);
    }
    Result<std::uint64_t> disk_size(const std::string& disk) override {
        return configfs_.disk_size(disk);
    }
    Result<UnusedDetached> detach_unused(std::string_view tag,
                                         const std::vector<std::string>& in_use) override {
        return configfs_.detach_unused(tag, in_use);
    }

  private:
    Configfs configfs_;
};

}  // namespace

std::unique_ptr<OriginDevices> make_configfs_origin_devices() {
    return std::make_unique<ConfigfsOriginDevices>();
}

}  // namespace wrenn::tcmu
