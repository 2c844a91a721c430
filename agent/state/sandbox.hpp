#pragma once

#include <boost/json/value.hpp>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/result.hpp"

namespace wrenn::agent {

enum class SandboxState { Running, Paused };
std::string_view to_string(SandboxState state);

// What a template image was when a sandbox was made over it. A CoW means something only over the
// exact bytes it was written against, so resume, flatten and adoption compare this first.
struct TemplateIdentity {
    std::uint64_t device = 0;  // st_dev
    std::uint64_t inode = 0;
    std::uint64_t size_bytes = 0;
    std::int64_t mtime_ns = 0;
    std::int64_t ctime_ns = 0;
    // "blocks-sha256-4k:<hex>" (agent/state/template_blocks.hpp), or "sha256:<hex>" in records of
    // earlier agents; empty while pending: a create never waits for it, and the agent writes it
    // into the record once the background read of exactly this version has finished.
    std::string digest;

    // What a loop device of this image serves, and so the origin a sandbox over it sees: its
    // whole 512-byte sectors (a tail shorter than a sector is not part of any disk).
    [[nodiscard]] std::uint64_t served_bytes() const { return size_bytes / 512 * 512; }

    // The same file, untouched since: device, inode, size, mtime and ctime all equal. Anything
    // else (a rewrite in place, a rename over it, a touch) needs the digest to decide.
    [[nodiscard]] bool same_file_state(const TemplateIdentity& other) const;
    // In words, what differs between `was` and this: "inode 12 -> 15, size 4096 -> 8192".
    [[nodiscard]] std::string describe_change_from(const TemplateIdentity& was) const;
    bool operator==(const TemplateIdentity&) const = default;
};

// Where a sandbox's read-only origin comes from: a template image on a shared loop device, or
// a TCMU block device (overlaybd) shared by every sandbox with the same config.
struct OriginSpec {
    enum class Type { Loop, Tcmu };
    Type type = Type::Loop;
    std::string path;     // Loop: the template image; Tcmu: the backstore's config file
    std::string handler;  // Tcmu only: "overlaybd" by default
    std::optional<std::uint64_t> size_bytes;  // Tcmu only: written as dev_size when set
    // Loop only: the image the sandbox was made over (absent in records older than this field).
    std::optional<TemplateIdentity> identity;

    // The key by which origins are shared and reference-counted: the path, and for TCMU also
    // the handler and size (each its own device).
    [[nodiscard]] std::string key() const;
    bool operator==(const OriginSpec&) const = default;
};

// Everything the agent knows of one sandbox: what sandbox.json holds, and what the API shows.
struct Sandbox {
    std::string id;
    SandboxState state = SandboxState::Running;
    std::string template_name;  // empty for a TCMU origin
    OriginSpec origin;
    std::string origin_device;  // "/dev/loop3" or "/dev/sda" while running; empty when paused
    std::string device;         // "/dev/mapper/wrenn-<id>" while running; empty when paused
    std::string cow_path;
    std::uint64_t cow_size_bytes = 0;
    std::uint64_t origin_size_bytes = 0;
    std::uint64_t cow_allocated_bytes = 0;  // last known: live from dm status while running
    // The kernel's word on the snapshot at the last look: "active", "invalid" (an I/O error,
    // e.g. the CoW's filesystem is full), "overflow"; empty when unknown or paused.
    std::string cow_status;
    std::string created_at;
    std::string updated_at;
    std::optional<std::string> last_error;
    std::string forked_from;  // the sandbox this one was forked from; empty when created
    // Not in sandbox.json: the agent's live view of a running sandbox's device I/O. Suspended
    // because the state filesystem is nearly full (the API shows "io": "suspended_no_space"),
    // who holds it suspended ("fork", "export", "space"), and why its last resume failed.
    bool io_suspended_for_space = false;
    std::vector<std::string> io_suspended_by;
    std::string io_error;
};

// The record as written to sandbox.json (all fields) and the view the API returns.
boost::json::object record_to_json(const Sandbox& sandbox);
Result<Sandbox> record_from_json(const boost::json::value& json);
boost::json::object api_view(const Sandbox& sandbox);

// "2026-11-21T13:35:27.123Z": record timestamps and JSON log lines share this one format.
std::string format_utc(std::chrono::system_clock::time_point when);
std::string utc_now();

}  // namespace wrenn::agent
