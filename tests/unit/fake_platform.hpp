#pragma once

// A Platform with the kernel replaced by maps: devices, origins and their reference counts.
// Failures are injected per call so the agent's state machine can be driven through every path.

#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <set>

#include "agent/platform/platform.hpp"
#include "agent/state/template_image.hpp"

namespace wrenn::agent::testing {

class FakePlatform : public Platform {
  public:
    KernelSupport kernel{true, true, true, "", "", "", true};
    std::uint64_t origin_size = 64ull << 20;

    // Injected failures: errno for the next call of that kind (0 = succeed).
    int fail_remove_errno = 0;
    int fail_create_errno = 0;
    int fail_acquire_errno = 0;
    int tcmu_check_errno = 0;  // check_tcmu_origin fails with this errno (every call)
    bool cow_valid = true;
    SnapshotUsage::State usage_state = SnapshotUsage::State::Active;
    int cow_error_errno = -1;  // >= 0: cow_store_valid fails with this errno
    int fail_list_errno = 0;   // every list_snapshots fails with this errno while set
    // Runs (once) as snapshot_usage returns, without the lock: lets a test race a GET.
    std::function<void()> on_usage;

    std::map<std::string, std::string> devices;  // id -> origin device
    // Whose each device is (absent: ours) and which CoW file its table is over (absent: none
    // known, as a device made by hand or a create cut short before its table).
    std::map<std::string, dm::DeviceOwner> owners;
    std::map<std::string, std::string> cows;
    std::map<std::string, int> origin_refs;  // origin key -> references
    std::set<std::string> attached_ever;     // origin keys ever attached
    std::vector<std::string> calls;          // "create sb1", "remove sb1", ...
    std::set<std::string> released_dirs;
    std::set<std::string> suspended;              // devices whose I/O is suspended
    FreeSpace space{100ull << 30, 200ull << 30};  // the state filesystem: 100 of 200 GiB free
    int fail_space_errno = 0;
    int fail_suspend_errno = 0;     // the next suspend_snapshot fails with this errno
    int fail_resume_errno = 0;      // the next resume_snapshot fails with this errno
    int fail_resumes = 0;           // ... and so many more after it
    std::function<void()> on_copy;  // runs once inside the next copy_cow (while it copies)
    std::size_t tcmu_detached = 0;
    std::size_t info_queries = 0;  // snapshot_info calls
    mutable std::mutex mu;

    KernelSupport support() override { return kernel; }

    OriginCounts attached_origins() override {
        std::lock_guard lock(mu);
        OriginCounts counts;
        for (const auto& [key, refs] : origin_refs) {
            (key.rfind("loop:", 0) == 0 ? counts.loops : counts.tcmu) += refs > 0 ? 1 : 0;
        }
        return counts;
    }

    // Templates are real files in the test's temp folder, owned by whoever runs the tests.
    std::size_t templates_hashed = 0;
    Result<TemplateIdentity> inspect_template(const std::string& path) override {
        auto image = open_template(path, ::geteuid());
        if (!image) {
            return std::move(image).error();
        }
        return image->identity;
    }
    // Digest reads open the image here: counted, and held while hold_digest_reads is set, so
    // that a test can see what the agent does while a digest is pending.
    Result<TemplateImage> open_template_version(const std::string& path,
                                                const TemplateIdentity& expected) override {
        {
            std::unique_lock lock(mu);
            digest_gate.wait(lock, [this] { return !hold_digest_reads; });
            ++templates_hashed;
        }
        return agent::open_template_version(path, ::geteuid(), expected);
    }
    bool hold_digest_reads = false;
    std::condition_variable digest_gate;
    void release_digest_reads() {
        {
            std::lock_guard lock(mu);
            hold_digest_reads = false;
        }
        digest_gate.notify_all();
    }

    Result<AttachedOrigin> acquire_origin(const OriginSpec& origin) override {
        std::lock_guard lock(mu);
        calls.push_back("acquire " + origin.key());
        if (fail_acquire_errno != 0) {
            return Error("acquire " + origin.path, std::exchange(fail_acquire_errno, 0));
        }
        ++origin_refs[origin.key()];
        attached_ever.insert(origin.key());
        if (origin.type == OriginSpec::Type::Tcmu) {
            tcmu_devices.insert(origin.key());
        }
        std::uint64_t size = origin.size_bytes.value_or(origin_size);
        if (origin.type == OriginSpec::Type::Loop && origin.identity) {
            size = origin.identity->size_bytes / 512 * 512;  // as a loop serves it
        }
        return AttachedOrigin{origin.type == OriginSpec::Type::Loop ? "/dev/loop7" : "/dev/sda",
                              size};
    }

    Result<void> check_tcmu_origin(const OriginSpec& origin) override {
        std::lock_guard lock(mu);
        calls.push_back("check " + origin.key());
        if (tcmu_check_errno != 0) {
            return Error("allow TCMU config " + origin.path, tcmu_check_errno, "injected");
        }
        return success();
    }

    void release_origin(const OriginSpec& origin) override {
        std::lock_guard lock(mu);
        calls.push_back("release " + origin.key());
        if (--origin_refs[origin.key()] <= 0) {
            origin_refs.erase(origin.key());
            tcmu_devices.erase(origin.key());
        }
    }

    Result<std::string> create_snapshot(const std::string& id, const std::string& origin_device,
                                        std::uint64_t, const std::string& cow_path) override {
        std::lock_guard lock(mu);
        calls.push_back("create " + id);
        if (fail_create_errno != 0) {
            return Error("create wrenn-" + id, std::exchange(fail_create_errno, 0));
        }
        if (devices.count(id) != 0) {
            return Error("create wrenn-" + id, EEXIST);
        }
        devices[id] = origin_device;
        cows[id] = cow_path;
        owners.erase(id);
        return "/dev/mapper/wrenn-" + id;
    }

    Result<void> remove_snapshot(const std::string& id) override {
        std::lock_guard lock(mu);
        calls.push_back("remove " + id);
        if (fail_remove_errno != 0) {
            return Error("remove wrenn-" + id, std::exchange(fail_remove_errno, 0), "open count 1");
        }
        if (devices.erase(id) == 0) {
            return Error("remove wrenn-" + id, ENXIO);
        }
        suspended.erase(id);
        cows.erase(id);
        owners.erase(id);
        return success();
    }

    Result<std::optional<SnapshotInfo>> snapshot_info(const std::string& id) override {
        std::lock_guard lock(mu);
        ++info_queries;
        if (devices.count(id) == 0) {
            return std::optional<SnapshotInfo>{};
        }
        return std::optional<SnapshotInfo>{SnapshotInfo{true, 0, suspended.count(id) != 0}};
    }

    Result<void> suspend_snapshot(const std::string& id) override {
        std::lock_guard lock(mu);
        calls.push_back("suspend " + id);
        if (fail_suspend_errno != 0) {
            return Error("suspend wrenn-" + id, std::exchange(fail_suspend_errno, 0));
        }
        if (devices.count(id) == 0) {
            return Error("suspend wrenn-" + id, ENXIO);
        }
        suspended.insert(id);
        return success();
    }

    Result<void> resume_snapshot(const std::string& id) override {
        std::lock_guard lock(mu);
        calls.push_back("resume " + id);
        if (fail_resume_errno != 0) {
            const int code = fail_resume_errno;
            if (fail_resumes > 0) {
                --fail_resumes;
            } else {
                fail_resume_errno = 0;
            }
            return Error("resume wrenn-" + id, code);
        }
        if (devices.count(id) == 0) {
            return Error("resume wrenn-" + id, ENXIO);
        }
        suspended.erase(id);
        return success();
    }

    Result<FreeSpace> free_space(const std::string& dir) override {
        std::lock_guard lock(mu);
        if (fail_space_errno != 0) {
            return Error("statvfs " + dir, fail_space_errno);
        }
        return space;
    }

    Result<SnapshotUsage> snapshot_usage(const std::string& id) override {
        Result<SnapshotUsage> usage = [&]() -> Result<SnapshotUsage> {
            std::lock_guard lock(mu);
            if (devices.count(id) == 0) {
                return Error("status wrenn-" + id, ENXIO);
            }
            return SnapshotUsage{usage_state, 8192, 1 << 20};
        }();
        // After the kernel answered, before the caller acts on it: where a race would fall.
        if (auto hook = std::exchange(on_usage, nullptr)) {
            hook();
        }
        return usage;
    }

    Result<std::vector<ListedDevice>> list_snapshots() override {
        std::lock_guard lock(mu);
        calls.push_back("list");
        if (fail_list_errno != 0) {
            return Error("list device-mapper devices", fail_list_errno);
        }
        std::vector<ListedDevice> out;
        for (const auto& [id, dev] : devices) {
            auto owner = owners.find(id);
            // The fake's "CoW device" is the CoW file's path itself.
            auto cow = cows.find(id);
            out.push_back(ListedDevice{
                id, owner == owners.end() ? dm::DeviceOwner::Ours : owner->second,
                cow == cows.end() ? std::string() : cow->second, suspended.count(id) != 0});
        }
        return out;
    }

    Result<bool> snapshot_over_cow(const ListedDevice& device,
                                   const std::string& cow_path) override {
        std::lock_guard lock(mu);
        return !device.cow_device.empty() && device.cow_device == cow_path;
    }

    Result<bool> cow_store_valid(const std::string& cow, std::uint64_t) override {
        if (cow_error_errno >= 0) {
            return Error("read " + cow, cow_error_errno, "bad magic");
        }
        return cow_valid;
    }

    // The fake's copy: the source's size and its first MiB (all the unit tests ever write).
    int fail_copy_errno = 0;
    class FakeCopy : public PendingCopy {
      public:
        // As the real one: the copy is written under a pending name beside `to` (what
        // recovery and destroy recognise), renamed to it by commit().
        FakeCopy(std::string path, std::string to) : path_(std::move(path)), to_(std::move(to)) {}
        ~FakeCopy() override {
            if (!committed_) {
                ::unlink(path_.c_str());
            }
        }
        Result<void> commit() override {
            if (::rename(path_.c_str(), to_.c_str()) != 0) {
                return errno_error("rename " + path_);
            }
            committed_ = true;
            return success();
        }
        [[nodiscard]] std::string method() const override { return "fake"; }
        [[nodiscard]] std::string path() const override { return path_; }

      private:
        std::string path_;
        std::string to_;
        bool committed_ = false;
    };
    Result<std::unique_ptr<PendingCopy>> copy_cow(
        const std::string& from, const std::string& to,
        std::optional<std::chrono::steady_clock::time_point>) override {
        {
            std::lock_guard lock(mu);
            calls.push_back("copy " + from);
            if (fail_copy_errno != 0) {
                return Error("copy " + from, std::exchange(fail_copy_errno, 0));
            }
        }
        if (auto hook = std::exchange(on_copy, nullptr)) {
            hook();
        }
        std::ifstream in(from, std::ios::binary);
        if (!in) {
            return Error("copy " + from, ENOENT);
        }
        std::string head(1 << 20, '\0');
        in.read(head.data(), static_cast<std::streamsize>(head.size()));
        head.resize(static_cast<std::size_t>(in.gcount()));
        std::string pending = to + ".tmp-XXXXXX";
        const int fd = ::mkstemp(pending.data());
        if (fd < 0) {
            return errno_error("copy " + from);
        }
        ::close(fd);
        std::ofstream out(pending, std::ios::binary | std::ios::trunc);
        out.write(head.data(), static_cast<std::streamsize>(head.size()));
        out.close();
        std::filesystem::resize_file(pending, std::filesystem::file_size(from));
        return std::unique_ptr<PendingCopy>(std::make_unique<FakeCopy>(pending, to));
    }

    Result<FlattenResult> flatten(const std::string&, const std::string&,
                                  const std::string& out) override {
        std::lock_guard lock(mu);
        calls.push_back("flatten " + out);
        return FlattenResult{origin_size, 3, "fake", {}, 4096};
    }

    Result<std::size_t> release_loops_under(const std::string& dir) override {
        released_dirs.insert(dir);
        return std::size_t{0};
    }
    std::vector<std::string> loops_released_of;  // release_loops_of's paths, in order
    Result<std::size_t> release_loops_of(const std::string& path) override {
        std::lock_guard lock(mu);
        loops_released_of.push_back(path);
        return std::size_t{0};
    }
    Result<std::size_t> detach_tcmu_origins(const std::vector<OriginSpec>& origins) override {
        tcmu_detached += origins.size();
        return std::size_t{0};
    }

    // TCMU devices of ours in the kernel, by origin key: acquire attaches, the last release
    // detaches; a test may add one that a killed destroy left. A key in tcmu_in_use has a disk
    // that something else holds (it stays).
    std::set<std::string> tcmu_devices;
    std::set<std::string> tcmu_in_use;
    int fail_sweep_errno = 0;
    Result<std::size_t> detach_unused_tcmu(std::vector<std::string>& problems) override {
        std::lock_guard lock(mu);
        calls.push_back("sweep tcmu");
        if (fail_sweep_errno != 0) {
            return Error("list tcmu devices", fail_sweep_errno);
        }
        std::size_t detached = 0;
        for (auto it = tcmu_devices.begin(); it != tcmu_devices.end();) {
            if (origin_refs.count(*it) != 0) {
                ++it;
            } else if (tcmu_in_use.count(*it) != 0) {
                problems.push_back("detach " + *it + ": device busy");
                ++it;
            } else {
                it = tcmu_devices.erase(it);
                ++detached;
            }
        }
        return detached;
    }
};

}  // namespace wrenn::agent::testing
