#pragma once

// The sandbox operations, one file each, as functions over an OperationContext. Each runs on its
// sandbox's strand (the OperationRunner puts it there) and orders its steps so that a crash at
// any instant leaves a state recover() repairs without losing CoW data.
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "agent/platform/metrics.hpp"
#include "agent/platform/platform.hpp"
#include "agent/platform/space.hpp"
#include "agent/state/sandbox.hpp"
#include "agent/state/state_store.hpp"
#include "agent/table/checks.hpp"
#include "agent/table/failure.hpp"
#include "agent/table/operation_runner.hpp"
#include "agent/table/sandbox_table.hpp"
#include "agent/table/suspensions.hpp"
#include "agent/templates/template_digests.hpp"
#include "agent/transfer/transfer.hpp"
#include "archive/format.hpp"

namespace wrenn::agent {

struct CreateRequest {
    std::string id;                         // empty: the agent makes one
    std::string template_name;              // a loop origin from <templates-dir>/<name>.img
    std::optional<OriginSpec> tcmu_origin;  // or a TCMU origin
};

struct TemplateInfo {
    std::string name;
    std::string path;
    std::uint64_t size_bytes = 0;
    std::size_t sandboxes = 0;
    // "blocks-sha256-4k:<hex>"; empty while the agent reads it in the background, or when the
    // image cannot be used (see problem).
    std::string digest;
    std::string problem;  // why the agent refuses this image, e.g. a symlink or a foreign owner
    std::string sha256;   // the whole image's "sha256:<hex>", known only once something needed it
};

struct RecoveryReport {
    std::size_t adopted = 0;        // running, device still there
    std::size_t paused = 0;         // were running, device gone (host rebooted)
    std::size_t stale_removed = 0;  // wrenn- devices of ours no sandbox runs on
    std::size_t unfinished_removed = 0;
    std::size_t foreign_left = 0;        // devices of another state dir, left alone
    std::size_t temp_files_removed = 0;  // temp files left by a killed flatten or export
    std::size_t suspended_found = 0;     // adopted devices found suspended (for space)
    std::size_t tcmu_detached = 0;       // TCMU devices of ours no sandbox used
    std::vector<std::string> problems;   // what could not be repaired, in words
};

struct SandboxOptions {
    std::string templates_dir;
    // The longest a fork may hold a running source's I/O suspended for its copy.
    std::chrono::milliseconds fork_max_stall{2000};
    // Exports and imports that may stream at once, each on a thread of its own.
    std::size_t max_transfers = 8;
    // The slowest a transfer may move, in bytes per second averaged over each window (0: none).
    std::uint64_t min_transfer_rate = 64 * 1024;
    std::chrono::milliseconds transfer_rate_window{30000};
};

// Export: called once every check passed, before the first byte; returns where the bytes go.
using ExportBegin = std::function<archive::ByteSink()>;
// Import: blocking reads of the archive (0 at its end, an error when it was cut short).
using ReadBody = std::function<Result<std::size_t>(std::span<std::byte>)>;
struct ImportOptions {
    // Bytes an archive may have at most; also at most its template's size plus 1%.
    std::uint64_t max_bytes = UINT64_MAX;
};

// What every operation works over: the kernel, the records, the table and the services.
struct OperationContext {
    Platform& platform;
    StateStore& store;
    SandboxTable& table;
    OperationRunner& runner;
    Suspensions& suspensions;
    TemplateDigests& digests;
    Metrics& metrics;
    SandboxOptions options;
    SpaceWatcher* space = nullptr;  // none: space is not watched

    // <templates-dir>/<name>.img
    [[nodiscard]] std::string template_path(const std::string& name) const {
        return options.templates_dir + "/" + name + ".img";
    }
};

// ---- create.cpp, pause.cpp, resume.cpp, destroy.cpp, flatten.cpp ----
std::string new_sandbox_id();
Result<Sandbox, Failure> create_sandbox(OperationContext& ctx, const EntryPtr& entry,
                                        const CreateRequest& request);
// A failure to remove the device is fatal to the pause: the sandbox stays running.
Result<Sandbox, Failure> pause_sandbox(OperationContext& ctx, const EntryPtr& entry);
// Removes a stale device of the same name first, then builds the snapshot over the same CoW.
Result<Sandbox, Failure> resume_sandbox(OperationContext& ctx, const EntryPtr& entry);
Result<Done, Failure> destroy_sandbox(OperationContext& ctx, const EntryPtr& entry);
// Lets go of the entry's reference on its origin, if it holds one (pause, destroy).
void release_origin_of(OperationContext& ctx, const EntryPtr& entry, const OriginSpec& origin);
Result<TemplateInfo, Failure> flatten_sandbox(OperationContext& ctx, const EntryPtr& entry,
                                              const std::string& template_name);

// ---- fork.cpp ----
// `child` (reserved) running over the source's origin with a point-in-time copy of its CoW.
Result<Sandbox, Failure> fork_sandbox(OperationContext& ctx, const EntryPtr& source,
                                      const EntryPtr& child);
// A copy of the source's CoW at `to`; a running source is held suspended for `reason` (fork or
// export) meanwhile, at most --fork-max-stall.
Result<std::unique_ptr<PendingCopy>, Failure> copy_source_cow(
    OperationContext& ctx, const EntryPtr& source, const Sandbox& from, const std::string& to,
    const std::string& what, SuspendReason reason);
// The new sandbox's folder, for fork and import: 409 already_exists when it is there.
Result<Done, Failure> make_sandbox_dir(OperationContext& ctx, const std::string& id,
                                       const std::string& what);

// ---- export_import.cpp ----
// An export in two steps: checks, the template's digest, a running sandbox's point-in-time
// copy and the store's check on its strand (prepare_export, which holds the entry for the
// stream only when the sandbox is paused), then the stream on the transfer pool.
struct PreparedExport {
    std::string id;
    bool compress = true;
    SpaceReservation reservation;  // the copy's room, held until the copy is gone
    std::unique_ptr<PendingCopy> copy;
    std::optional<ArchiveExport> exporter;
};
Result<OperationRunner::Prepared<PreparedExport>, Failure> prepare_export(OperationContext& ctx,
                                                                          const EntryPtr& entry,
                                                                          bool compress);
Result<TransferStats, Failure> stream_export(OperationContext& ctx, PreparedExport& prepared,
                                             const ExportBegin& begin);
Result<Sandbox, Failure> import_sandbox(OperationContext& ctx, const EntryPtr& entry,
                                        const ImportOptions& options, const ReadBody& read_body);

// ---- templates.cpp ----
// The image a create of `name` uses now, checked, with its digest if known (never waits).
Result<TemplateIdentity, Failure> identify_template(OperationContext& ctx, const std::string& name,
                                                    const std::string& what);
// Whether a loop-origin sandbox's template is still the image it was made over: the identity
// to record from now on (nullopt for other origins), or 409 template_changed.
Result<std::optional<TemplateIdentity>, Failure> verify_template(OperationContext& ctx,
                                                                 const Sandbox& sb,
                                                                 const std::string& what);
// TemplateDigests' callback: writes a version's new-found digest into its sandboxes' records,
// each on its strand.
void record_digest(OperationContext& ctx, const std::string& path, const TemplateIdentity& version);
// The names of the templates in templates_dir (<name>.img with a valid name), sorted.
Result<std::vector<std::string>> template_names(const OperationContext& ctx);
// Every template in templates_dir, as GET /templates shows it; never reads an image.
Result<std::vector<TemplateInfo>, Failure> list_templates(OperationContext& ctx);

// ---- recovery.cpp ----
Result<RecoveryReport> recover(OperationContext& ctx);
Result<RecoveryReport> cleanup_stale(OperationContext& ctx);
// <name>.img.tmp-XXXXXX, the temp file a flatten writes before renaming it to <name>.img.
bool is_flatten_temp_name(std::string_view file);

// ---- space_actions.cpp: the sandboxes' side of SpaceActions ----
std::size_t suspend_for_space(OperationContext& ctx);
std::size_t resume_after_space(OperationContext& ctx);
std::size_t suspended_for_space(const OperationContext& ctx);
std::vector<std::pair<std::string, std::uint64_t>> cow_disk_usage(const OperationContext& ctx);

}  // namespace wrenn::agent
