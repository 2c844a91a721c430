#include "tcmu/device/attach.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <optional>
#include <utility>
#include <vector>

#include "tcmu/configfs/naming.hpp"
#include "tcmu/configfs/origin_policy.hpp"
#include "tcmu/device/attach_log.hpp"
#include "tcmu/device/attach_waits.hpp"
#include "tcmu/device/detach.hpp"

namespace wrenn::tcmu {

namespace {

// Everything one attach try created, removed in reverse when the try fails.
class CreatedObjects {
  public:
    enum class Kind { dir, link };
    void push(Kind kind, std::string path) { objects_.emplace_back(kind, std::move(path)); }

    // Removes all, newest first, continuing past failures; returns the first failure.
    Result<void> remove_all(ConfigfsOps& ops, AttachLog& log) {
        Result<void> first;
        for (auto it = objects_.rbegin(); it != objects_.rend(); ++it) {
            Result<void> r =
                it->first == Kind::link ? ops.remove_link(it->second) : ops.remove_dir(it->second);
            if (r) {
                log.add("cleanup: removed " + it->second);
            } else {
                log.add("cleanup failed: " + r.error().message());
                spdlog::warn("tcmu: cleanup after a failed attach: {}", r.error().message());
                if (first) {
                    first = r.error();
                }
            }
        }
        objects_.clear();
        return first;
    }

  private:
    std::vector<std::pair<Kind, std::string>> objects_;
};

// mkdir that accepts an existing folder: for folders shared by all devices (the HBA, the
// loopback fabric), which attach creates on first use and never removes.
Result<void> ensure_dir(ConfigfsOps& ops, const std::string& path, AttachLog& log) {
    Result<void> r = ops.make_dir(path);
    if (!r && r.error().code() != EEXIST) {
        return r;
    }
    log.add(r ? "mkdir " + path : "exists " + path);
    return success();
}

// Writes 1 to enable. EAGAIN is transient (overlaybd retries it 100 x 50 ms); anything else is not.
Result<void> enable_device(ConfigfsOps& ops, const DevicePaths& paths,
                           const ConfigfsOptions& options, AttachLog& log) {
    for (int retry = 0;; ++retry) {
        Result<void> r = ops.write_file(paths.enable, "1");
        if (r) {
            log.add("write " + paths.enable + ": 1");
            return r;
        }
        if (r.error().code() != EAGAIN || retry >= options.enable_eagain_retries) {
            return r;
        }
        log.add("enable: " + r.error().message() + ", retry " + std::to_string(retry + 1) + " of " +
                std::to_string(options.enable_eagain_retries));
        ops.sleep_for(options.enable_retry_delay);
    }
}

// The core device's serial, control values and enable, in attach's order; the error says which
// step failed.
Result<void> configure_core(ConfigfsOps& ops, const AttachRequest& req, const DevicePaths& paths,
                            const std::string& dev_name, const ConfigfsOptions& options,
                            AttachLog& log) {
    if (!req.serial.empty()) {
        // First, so that a device of ours says so from the start; the kernel takes it only
        // before the device is exported (target_wwn_vpd_unit_serial_store: EINVAL after).
        if (Result<void> r = ops.write_file(paths.serial, req.serial); !r) {
            return std::move(r).error().within("mark tcmu device " + dev_name);
        }
        log.add("write " + paths.serial + ": " + req.serial);
    }

    // These control values are fixed once the device is enabled.
    std::vector<std::string> controls = {
        "dev_config=" + dev_config_for(req.handler, req.config_path),
        "max_data_area_mb=" + std::to_string(req.max_data_area_mb)};
    if (req.size_bytes) {
        controls.push_back("dev_size=" + std::to_string(*req.size_bytes));
    }
    for (const std::string& value : controls) {
        if (Result<void> r = ops.write_file(paths.control, value); !r) {
            return std::move(r).error().within("configure tcmu device " + dev_name);
        }
        log.add("write " + paths.control + ": " + value);
    }
    if (options.skip_netlink_reply) {
        // See ConfigfsOptions::skip_netlink_reply. Kernels before 4.16 lack the attribute and
        // never wait, so ENOENT is fine.
        Result<void> r = ops.write_file(paths.nl_reply_supported, "-1");
        if (!r && r.error().code() != ENOENT) {
            return std::move(r).error().within("configure tcmu device " + dev_name);
        }
        log.add(r ? "write " + paths.nl_reply_supported + ": -1"
                  : "no " + paths.nl_reply_supported);
    }
    if (Result<void> r = enable_device(ops, paths, options, log); !r) {
        return std::move(r).error().within("enable tcmu device " + dev_name);
    }
    return success();
}

// One try. On failure removes what it created; `retryable` says whether another try may help.
Result<std::string> attach_once(ConfigfsOps& ops, const ConfigfsOptions& options,
                                const AttachRequest& req, AttachLog& log, bool& retryable) {
    const DevicePaths paths(req.id, options);
    const std::string dev_name = core_device_name(req.id);
    const std::string wwn = wwn_for_id(req.id);
    CreatedObjects created;
    retryable = true;

    // Undoes the try and returns its error, which already says what failed.
    auto fail_with = [&](Error out) -> Error {
        log.add("failed: " + out.message());
        Result<void> cleaned = created.remove_all(ops, log);
        if (!cleaned) {
            // A try that leaves objects behind would make the next one fail on them.
            retryable = false;
            return Error(out.action(), out.code(),
                         (out.detail().empty() ? "" : out.detail() + "; ") +
                             "cleanup failed: " + cleaned.error().message());
        }
        return out;
    };
    auto fail = [&](Error error, std::string_view step) -> Error {
        return fail_with(std::move(error).within(step));
    };

    if (Result<void> r = ensure_dir(ops, paths.hba, log); !r) {
        return fail(std::move(r).error(), "create tcmu hba user_" + std::to_string(kDefaultHba));
    }
    Result<void> made = ops.make_dir(paths.core);
    bool taken_over = false;  // an enabled half-made device of this request, continued
    if (!made && made.error().code() == EEXIST) {
        // Another try cannot succeed while the id is taken: a refusal here is final.
        retryable = false;
        const std::string action = "create tcmu device " + dev_name + ": mkdir " + paths.core;
        auto found = DeviceQueries(ops, options).inspect_existing(req.id);
        if (!found) {
            return Error(action, EEXIST,
                         "the id is in use, and reading it failed: " + found.error().message());
        }
        const ExistingVerdict verdict = judge_existing(*found, req);
        if (verdict.kind == ExistingVerdict::Kind::Foreign) {
            return Error(action, EEXIST, "the id is in use: " + verdict.why);  // never touched
        }
        if (verdict.kind == ExistingVerdict::Kind::Complete) {
            return Error(action, EEXIST,
                         "the id is in use by a device for this same origin; detach it first");
        }
        if (found->enabled && !found->exported) {
            // Enabled, so the kernel has announced it to the handler, which may still be acting
            // on that announcement. Removed and made again at once, the device comes back under
            // the same name and UIO minor while the handler is still busy with the old one
            // (seen in the VM with tcmu-runner: it then served neither, and the redo timed out
            // waiting for it). Its values are this request's: take it over where it stopped.
            const std::string line = dev_name +
                                     " exists enabled but not exported, left by an "
                                     "attach that did not finish; taking it over "
                                     "from there";
            spdlog::warn("tcmu: {}", line);
            log.add(line);
            // What the killed attach made of its loopback target (never linked) goes.
            if (Result<void> r = Detacher(ops, options)
                                     .remove_loopback_target(
                                         req.id, "remove the loopback target of " + dev_name);
                !r) {
                return std::move(r).error().within("take over half-made tcmu device " + dev_name);
            }
            retryable = true;  // from here on, an ordinary try...
            created.push(CreatedObjects::Kind::dir, paths.core);  // ...which undoes it on failure
            taken_over = true;
        } else {
            // Not enabled (no handler has heard of it), or exported without its disk (the
            // handler took it long ago): undo and redo.
            const std::string line = dev_name + " exists half-made (" + verdict.why +
                                     "), left by an attach that did not finish; removing it and "
                                     "attaching again";
            spdlog::warn("tcmu: {}", line);
            log.add(line);
            if (Result<void> undone = Detacher(ops, options).detach(req.id); !undone) {
                return std::move(undone).error().within("remove half-made tcmu device " + dev_name);
            }
            retryable = true;  // from here on, an ordinary try
            made = ops.make_dir(paths.core);
        }
    }
    if (!taken_over) {
        if (!made) {
            return fail(std::move(made).error(), "create tcmu device " + dev_name);
        }
        created.push(CreatedObjects::Kind::dir, paths.core);
        log.add("mkdir " + paths.core);
        if (Result<void> r = configure_core(ops, req, paths, dev_name, options, log); !r) {
            return fail_with(std::move(r).error());
        }
    }
    if (req.cmd_time_out_s > 0) {
        std::string value = std::to_string(req.cmd_time_out_s);
        if (Result<void> r = ops.write_file(paths.cmd_time_out, value); !r) {
            return fail(std::move(r).error(), "set cmd_time_out of tcmu device " + dev_name);
        }
        log.add("write " + paths.cmd_time_out + ": " + value);
    }

    // Before the LUN exists, so that no SCSI scan can wait on a device nobody serves.
    if (Result<void> r = wait_for_handler(ops, options, req.handler, dev_name, log); !r) {
        if (r.error().code() == ETIMEDOUT) {
            // The backstore will not start by itself. But a taken-over device may be one its
            // handler gave up on: the cleanup removes it, and one fresh try tells the handler anew.
            retryable = taken_over;
        }
        return fail_with(std::move(r).error());
    }

    // The loopback fabric's folder appears on first mkdir (it loads tcm_loop if needed).
    if (Result<void> r = ensure_dir(ops, paths.loopback, log); !r) {
        return fail(std::move(r).error(), "create loopback fabric");
    }
    for (const std::string* dir : {&paths.target, &paths.tpg, &paths.lun}) {
        if (Result<void> r = ops.make_dir(*dir); !r) {
            return fail(std::move(r).error(), "create loopback target " + wwn);
        }
        created.push(CreatedObjects::Kind::dir, *dir);
        log.add("mkdir " + *dir);
    }
    if (Result<void> r = ops.write_file(paths.nexus, wwn); !r) {
        return fail(std::move(r).error(), "create nexus of " + wwn);
    }
    log.add("write " + paths.nexus + ": " + wwn);
    // Linking the device into the LUN makes tcm_loop add and scan the SCSI device.
    if (Result<void> r = ops.make_symlink(paths.core, paths.link); !r) {
        return fail(std::move(r).error(), "export " + dev_name + " as lun_0 of " + wwn);
    }
    created.push(CreatedObjects::Kind::link, paths.link);
    log.add("symlink " + paths.link + " -> " + paths.core);

    auto text = ops.read_file(paths.address);
    if (!text) {
        return fail(std::move(text).error(), "read SCSI address of " + wwn);
    }
    auto address = parse_scsi_address(*text);
    if (!address) {
        return fail(std::move(address).error(),
                    "read SCSI address of " + wwn + " from " + paths.address);
    }
    log.add("scsi address " + *address);

    auto disk = wait_for_disk(ops, options, *address, log);
    if (!disk) {
        return fail(std::move(disk).error(), "attach " + dev_name + " as a disk");
    }
    return disk;
}

Result<void> validate(const AttachRequest& req) {
    const std::string action = "attach tcmu device " + req.id;
    if (!is_valid_id(req.id)) {
        return Error(action, EINVAL, "the id must be 1 to 13 decimal digits");
    }
    // Every caller, the operator's CLI too: a ',' or newline in dev_config would add configfs
    // options, and a value over the kernel's limit would be cut.
    if (Result<void> r = check_dev_config(req.handler, req.config_path); !r) {
        return std::move(r).error().within(action);
    }
    if (req.max_data_area_mb == 0) {
        return Error(action, EINVAL, "max_data_area_mb must be positive");
    }
    if (!req.serial.empty() && !is_valid_serial(req.serial)) {
        return Error(action, EINVAL, "the serial must be 1 to 253 characters from [A-Za-z0-9._-]");
    }
    return success();
}

}  // namespace

ExistingVerdict judge_existing(const ExistingDevice& found, const AttachRequest& req) {
    using Kind = ExistingVerdict::Kind;
    const std::string want_config = dev_config_for(req.handler, req.config_path);
    if (!found.dev_config.empty() && found.dev_config != want_config) {
        return {Kind::Foreign, "its dev_config is \"" + escape_for_log(found.dev_config) +
                                   "\" but this origin's is \"" + escape_for_log(want_config) +
                                   "\"; the id belongs to another device, which is left alone"};
    }
    const std::uint64_t want_size = req.size_bytes.value_or(0);
    const auto size_text = [](std::uint64_t size) {
        return size == 0 ? std::string("none") : std::to_string(size);
    };
    // An enabled device was configured for good (dev_size is fixed by enable), so what it lacks
    // it will never have: another's.
    if ((found.dev_size != 0 || found.enabled) && found.dev_size != want_size) {
        return {Kind::Foreign, "its dev_size is " + size_text(found.dev_size) +
                                   " but this origin's is " + size_text(want_size) +
                                   "; the id belongs to another device, which is left alone"};
    }
    if (found.enabled && found.dev_config.empty()) {
        return {Kind::Foreign, "it is enabled without a dev_config; not a device wrenn made"};
    }
    if (!found.serial.empty() && found.serial != req.serial) {
        return {Kind::Foreign,
                "its serial is \"" + escape_for_log(found.serial) + "\" but this attach's is " +
                    (req.serial.empty() ? std::string("none")
                                        : "\"" + escape_for_log(req.serial) + "\"") +
                    " (another state dir's or another tool's device), which is left alone"};
    }
    if (found.enabled && found.exported && found.disk) {
        return {Kind::Complete, "enabled, exported, with its disk"};
    }
    return {Kind::HalfMade, !found.enabled    ? "not enabled"
                            : !found.exported ? "enabled but not exported"
                                              : "exported but without its disk"};
}

Result<std::string> Attacher::attach(const AttachRequest& req) {
    if (Result<void> r = validate(req); !r) {
        return std::move(r).error();
    }
    AttachLog log;
    log.add("attach " + req.handler + "/" + req.config_path + " as id " + req.id);
    const int attempts = std::max(1, options_.attempts);
    std::optional<Error> last;
    for (int attempt = 1; attempt <= attempts; ++attempt) {
        bool retryable = true;
        auto disk = attach_once(ops_, options_, req, log, retryable);
        if (disk) {
            spdlog::info("tcmu: attached {} ({}/{}) as {}", req.id, req.handler, req.config_path,
                         *disk);
            log.append_to_result_file(req);
            return disk;
        }
        last = std::move(disk).error();
        if (!retryable || attempt == attempts) {
            last = std::move(*last).within("attach tcmu device " + req.id + " (try " +
                                           std::to_string(attempt) + " of " +
                                           std::to_string(attempts) + ")");
            break;
        }
        spdlog::warn("tcmu: attach {} try {} of {} failed, retrying in {} ms: {}", req.id, attempt,
                     attempts, options_.retry_delay.count(), last->message());
        log.add("try " + std::to_string(attempt) + " failed; retrying");
        ops_.sleep_for(options_.retry_delay);
    }
    spdlog::error("tcmu: {}", last->message());
    log.append_to_result_file(req);
    return std::move(*last);
}

}  // namespace wrenn::tcmu
