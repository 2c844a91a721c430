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

#include "agent/catalog/catalog.hpp"
#include "agent/state/sandbox.hpp"
#include "agent/table/checks.hpp"
#include "agent/table/failure.hpp"
#include "agent/table/operation_context.hpp"
#include "agent/transfer/transfer.hpp"
#include "archive/format.hpp"

namespace wrenn::agent {

struct CreateRequest {
    std::string id;  // empty: the agent makes one
    // A loop origin from <templates-dir>/<name>.img, or the image whose digest this is
    // ("blocks-sha256-4k:<hex>"), whatever its name.
    std::string template_name;
    std::optional<OriginSpec> tcmu_origin;  // or a TCMU origin
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

struct ImportOptions {
    // Bytes an archive may have at most; also at most its template's size plus 1%.
    std::uint64_t max_bytes = UINT64_MAX;
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
