#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <optional>

#include "agent/platform/platform.hpp"
#include "dm/device_mapper.hpp"
#include "loop/loop_registry.hpp"
#include "tcmu/configfs/origin_policy.hpp"
#include "tcmu/origin_registry.hpp"

namespace wrenn::agent {

// The Platform over the real kernel: template loops through loop::LoopRegistry, snapshots
// through dm::DeviceMapper, TCMU origins through tcmu::OriginRegistry, flatten through
// flatten/. What the kernel lacks is learned once at start and reported by support(); the agent
// still starts, so that /healthz can say what is missing.
class LinuxPlatform final : public Platform {
  public:
    struct Options {
        std::chrono::milliseconds remove_time_limit{5000};
        uid_t template_owner = 0;        // templates must belong to root
        tcmu::OriginPolicy tcmu_policy;  // which TCMU origins the API may attach
        // The state dir's tag (state_dir_tag()): written into the dm UUID of every device we
        // make and into the serial of every TCMU device we attach, and how list_snapshots() and
        // detach_unused_tcmu() tell ours from another state dir's.
        std::string owner_tag;
    };
    explicit LinuxPlatform(Options options);

    KernelSupport support() override;
    OriginCounts attached_origins() override;
    Result<TemplateIdentity> inspect_template(const std::string& path) override;
    Result<TemplateImage> open_template_version(const std::string& path,
                                                const TemplateIdentity& expected) override;
    Result<AttachedOrigin> acquire_origin(const OriginSpec& origin) override;
    Result<void> check_tcmu_origin(const OriginSpec& origin) override;
    void release_origin(const OriginSpec& origin) override;
    Result<std::string> create_snapshot(const std::string& id, const std::string& origin_device,
                                        std::uint64_t origin_bytes,
                                        const std::string& cow_path) override;
    Result<void> remove_snapshot(const std::string& id) override;
    Result<std::optional<SnapshotInfo>> snapshot_info(const std::string& id) override;
    Result<void> suspend_snapshot(const std::string& id) override;
    Result<void> resume_snapshot(const std::string& id) override;
    Result<FreeSpace> free_space(const std::string& dir) override;
    Result<SnapshotUsage> snapshot_usage(const std::string& id) override;
    Result<std::vector<ListedDevice>> list_snapshots() override;
    Result<bool> snapshot_over_cow(const ListedDevice& device,
                                   const std::string& cow_path) override;
    Result<bool> cow_store_valid(const std::string& cow_path, std::uint64_t origin_bytes) override;
    Result<std::unique_ptr<PendingCopy>> copy_cow(
        const std::string& from, const std::string& to,
        std::optional<std::chrono::steady_clock::time_point> deadline) override;
    Result<FlattenResult> flatten(const std::string& origin, const std::string& cow_path,
                                  const std::string& out) override;
    Result<std::size_t> release_loops_under(const std::string& dir) override;
    Result<std::size_t> release_loops_of(const std::string& path) override;
    Result<std::size_t> detach_tcmu_origins(const std::vector<OriginSpec>& origins) override;
    Result<std::size_t> detach_unused_tcmu(std::vector<std::string>& problems) override;

  private:
    Result<dm::DeviceMapper*> mapper();

    Options options_;
    KernelSupport support_;
    std::optional<dm::DeviceMapper> dm_;
    loop::LoopRegistry loops_;
    tcmu::OriginRegistry tcmu_origins_;
};

}  // namespace wrenn::agent
