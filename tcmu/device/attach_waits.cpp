#include "tcmu/device/attach_waits.hpp"

#include <cerrno>
#include <cstdio>
#include <optional>
#include <vector>

#include "tcmu/configfs/naming.hpp"
#include "tcmu/configfs/origin_policy.hpp"

namespace wrenn::tcmu {

namespace {

constexpr std::chrono::milliseconds kDiskPollInterval{50};

std::string millis(std::chrono::milliseconds d) {
    return std::to_string(d.count()) + " ms";
}

// A TCMU device's UIO node: tcmu_configure_device registers it during the enable write, named
// "tcm-user/<hba>/<device>/<dev_config>" (tcmu_update_uio_info). Returns its "uioN" and the
// major:minor from /sys/class/uio/uioN/dev.
struct UioNode {
    std::string name;
    unsigned major = 0;
    unsigned minor = 0;
};

Result<UioNode> find_uio_node(ConfigfsOps& ops, const std::string& dev_name,
                              const ConfigfsOptions& options) {
    const std::string uio_class = options.sys_root + "/class/uio";
    const std::string want = "tcm-user/" + std::to_string(kDefaultHba) + "/" + dev_name;
    auto names = ops.list_dir(uio_class);
    if (!names && names.error().code() != ENOENT) {
        return std::move(names).error();
    }
    for (const std::string& uio : names ? *names : std::vector<std::string>{}) {
        auto text = ops.read_file(uio_class + "/" + uio + "/name");
        if (!text) {
            if (text.error().code() == ENOENT) {
                continue;  // another device, removed meanwhile
            }
            return std::move(text).error();
        }
        const std::string name = trim_attribute(*text);
        if (name != want && name.rfind(want + "/", 0) != 0) {
            continue;
        }
        const std::string dev_path = uio_class + "/" + uio + "/dev";
        auto dev = ops.read_file(dev_path);
        if (!dev) {
            return std::move(dev).error();
        }
        UioNode node{uio};
        if (std::sscanf(trim_attribute(*dev).c_str(), "%u:%u", &node.major, &node.minor) != 2) {
            return Error("read " + dev_path, EINVAL,
                         "\"" + escape_for_log(*dev) + "\" is not major:minor");
        }
        return node;
    }
    return Error("find the UIO device of " + dev_name, ENOENT,
                 "no " + uio_class + "/*/name reads " + want + " after enable");
}

}  // namespace

Result<void> wait_for_handler(ConfigfsOps& ops, const ConfigfsOptions& options,
                              const std::string& handler_name, const std::string& dev_name,
                              AttachLog& log) {
    const std::string action = "wait for a userspace handler to take " + dev_name;
    auto node = find_uio_node(ops, dev_name, options);
    if (!node) {
        return std::move(node).error().within(action);
    }
    const std::string shown = options.dev_root + "/" + node->name;
    log.add("uio node " + shown + " (" + std::to_string(node->major) + ":" +
            std::to_string(node->minor) + ")");
    const auto deadline = ops.now() + options.handler_wait;
    std::optional<std::chrono::steady_clock::time_point> held_since;
    std::optional<ConfigfsOps::Opener> holder;
    const auto describe = [](const ConfigfsOps::Opener& o) {
        return "pid " + std::to_string(o.pid) +
               (o.command.empty() ? std::string() : " (" + escape_for_log(o.command) + ")");
    };
    for (;;) {
        auto opener = ops.char_device_opener(node->major, node->minor);
        if (!opener) {
            return std::move(opener).error().within(action + ": look for the process holding " +
                                                    shown);
        }
        const auto now = ops.now();
        if (*opener) {
            if (!held_since) {
                held_since = now;
                holder = **opener;
                log.add(shown + " opened by " + describe(**opener));
            }
            if (now - *held_since >= options.handler_settle) {
                log.add("the handler took " + dev_name + ": " + describe(**opener));
                return success();
            }
        } else if (held_since) {
            // It let go again: its handler failed to open the config (tcmu-runner logs why).
            log.add(describe(*holder) + " closed " + shown + " again");
            held_since.reset();
        }
        if (now >=
            deadline + (held_since ? options.handler_settle : std::chrono::milliseconds(0))) {
            break;
        }
        ops.sleep_for(options.handler_poll);
    }
    const std::string_view backstore = backstore_for_handler(handler_name);
    const std::string handler = escape_for_log(handler_name);
    std::string detail =
        holder
            ? describe(*holder) + " opened " + shown + " but closed it again: its " + handler +
                  " handler could not open the config; see " + std::string(backstore) + "'s log"
            : "no process opened " + shown + " within " + millis(options.handler_wait) + ": no " +
                  handler + " handler serves TCMU devices here; start " + std::string(backstore) +
                  ", the backstore of the " + handler + " handler, and attach again";
    return Error(action, ETIMEDOUT, detail);
}

Result<std::string> wait_for_disk(ConfigfsOps& ops, const ConfigfsOptions& options,
                                  const std::string& scsi_address, AttachLog& log) {
    const std::string block_dir = block_dir_for(options, scsi_address);
    const auto deadline = ops.now() + options.disk_wait;
    std::string seen;
    for (;;) {
        auto names = ops.list_dir(block_dir);
        if (names && !names->empty()) {
            seen = names->front();
            std::string dev = options.dev_root + "/" + seen;
            // The node appears before the disk can be opened (ENXIO until bdev_add, checked in
            // the VM: a caller that opened /dev/sdX at once failed): wait until it opens.
            if (ops.exists(dev)) {
                if (Result<void> opened = ops.open_shared(dev); opened) {
                    log.add("disk " + dev + " at " + block_dir);
                    return dev;
                } else if (opened.error().code() != ENXIO && opened.error().code() != ENOENT) {
                    return std::move(opened).error();
                }
            }
        }
        if (ops.now() >= deadline) {
            break;
        }
        ops.sleep_for(kDiskPollInterval);
    }
    std::string detail = seen.empty() ? "no block device under " + block_dir
                                      : block_dir + "/" + seen + " exists but " + options.dev_root +
                                            "/" + seen + " does not";
    detail += " after " + std::to_string(options.disk_wait.count()) + " ms; is the " +
              "backstore (tcmu-runner/overlaybd-tcmu) running?";
    return Error("wait for the disk at SCSI address " + scsi_address + ":0", ETIMEDOUT, detail);
}

}  // namespace wrenn::tcmu
