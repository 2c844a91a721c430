#pragma once

#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "agent/failure.hpp"
#include "agent/metrics.hpp"
#include "agent/platform.hpp"
#include "agent/sandbox.hpp"
#include "agent/space.hpp"
#include "agent/state_store.hpp"
#include "agent/template_digests.hpp"
#include "agent/transfer.hpp"

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

template <class T>
using Callback = std::function<void(Result<T, Failure>)>;

// The sandbox lifecycle. Owns the in-memory table of sandboxes and keeps it and the records on
// disk in step with the kernel. Operations on one sandbox run one at a time on that sandbox's
// strand; operations on different sandboxes run in parallel on the worker pool. Reads (get,
// list) answer from memory and never wait for a kernel operation. Every step is ordered so
// that a crash at any instant leaves a state recover() repairs without losing CoW data.
class SandboxManager : public SpaceActions {
  public:
    struct Options {
        std::string templates_dir;
        // The longest a fork may hold a running source's I/O suspended for its copy.
        std::chrono::milliseconds fork_max_stall{2000};
    };

    SandboxManager(Platform& platform, StateStore& store, Options options,
                   boost::asio::thread_pool& workers, Metrics& metrics);
    ~SandboxManager();
    SandboxManager(const SandboxManager&) = delete;
    SandboxManager& operator=(const SandboxManager&) = delete;

    // Startup: reads every record, adopts as running every sandbox whose device (ours) is live
    // over its CoW, pauses running ones whose device is gone, removes every other device of
    // ours, unfinished creates, flatten temp files and copies left by a killed export.
    // Devices of other state dirs are left alone. Fails, changing nothing, when the records or
    // the device list cannot be read.
    // Blocking; call before serving.
    Result<RecoveryReport> recover();
    // Boot: removes every wrenn- device of ours, lets go of our loops and TCMU devices, marks
    // running sandboxes paused whose device is really gone. Blocking. Ok when all was cleaned.
    Result<RecoveryReport> cleanup_stale();

    void create(CreateRequest request, Callback<Sandbox> done);
    void pause(const std::string& id, Callback<Sandbox> done);
    void resume(const std::string& id, Callback<Sandbox> done);
    void destroy(const std::string& id, Callback<Done> done);
    void flatten(const std::string& id, const std::string& template_name,
                 Callback<TemplateInfo> done);
    // A new sandbox `new_id` (empty: the agent makes one), running over the same origin, with
    // a point-in-time copy of the source's CoW (fork.cpp). A running source's I/O is suspended
    // only while its CoW is copied, at most Options::fork_max_stall.
    void fork(const std::string& id, std::string new_id, Callback<Sandbox> done);
    // Export (sandbox_transfer.cpp): streams the sandbox's archive (docs/archive.md), holding
    // its strand throughout; a running one is exported from a point-in-time copy of its CoW.
    // `begin` is called once every check passed, before the first byte, and returns where the
    // bytes go; `done` then reports how the stream ended. A failure before `begin` means
    // nothing was sent.
    using ExportBegin = std::function<archive::ByteSink()>;
    void export_sandbox(const std::string& id, bool compress, ExportBegin begin,
                        Callback<TransferStats> done);
    // Import: a new paused sandbox `id` from an archive read through `read_body` (blocking
    // reads on the worker pool; 0 at the end of the input, an error when it was cut short),
    // over the local template with the archive's digest. A refused or broken archive leaves
    // nothing; the record is written last.
    using ReadBody = std::function<Result<std::size_t>(std::span<std::byte>)>;
    struct ImportOptions {
        // Bytes an archive may have at most; also at most its template's size plus 1%.
        std::uint64_t max_bytes = UINT64_MAX;
    };
    void import_sandbox(const std::string& id, ImportOptions options, ReadBody read_body,
                        Callback<Sandbox> done);
    // The sandbox with live CoW usage from the kernel (runs on the query pool, not the strand).
    void get_live(const std::string& id, Callback<Sandbox> done);

    [[nodiscard]] std::optional<Sandbox> get(const std::string& id) const;
    [[nodiscard]] std::vector<Sandbox> list() const;
    void list_templates(Callback<std::vector<TemplateInfo>> done);
    [[nodiscard]] std::map<std::string, std::size_t> count_by_state() const;

    // Space on the state filesystem (sandbox_space.cpp). With a watcher set, creates, resumes
    // and flattens answer 507 insufficient_storage while it refuses new work. Set before
    // serving; the watcher must outlive the manager's operations.
    void set_space_watcher(SpaceWatcher* watcher) { space_ = watcher; }
    std::size_t suspend_for_space() override;
    std::size_t resume_after_space() override;
    [[nodiscard]] std::size_t suspended_for_space() const override;
    // Disk space each sandbox's CoW file takes now (allocated blocks), by sandbox id.
    [[nodiscard]] std::vector<std::pair<std::string, std::uint64_t>> cow_disk_usage() const;

    // Blocks until no operation is in flight (SIGTERM: stop accepting, then drain).
    void wait_idle();
    // Waits for operations and queries in flight and stops the query pool: call before the
    // io_context their callbacks answer on is destroyed.
    void shutdown();
    [[nodiscard]] std::size_t in_flight() const;

    [[nodiscard]] const StateStore& store() const { return store_; }

  private:
    // One sandbox in the table. `record` is guarded by the manager's mutex; everything that
    // changes the kernel or the disk for this sandbox runs on `strand`, one operation at a time.
    struct Entry {
        explicit Entry(boost::asio::thread_pool& pool) : strand(boost::asio::make_strand(pool)) {}
        boost::asio::strand<boost::asio::thread_pool::executor_type> strand;
        Sandbox record;
        bool ready = false;  // false while its create is in flight: invisible to reads
        bool gone = false;   // destroyed (or its create failed): later operations say not found
        bool origin_held = false;  // we hold a reference on its origin (running, origin acquired)
        // Bumped at every change of `record` by an operation: a read that went to the kernel
        // writes back only if nothing changed meanwhile.
        std::uint64_t generation = 0;
        // Its device's I/O is suspended for space (space.cpp). Not in the record: the kernel
        // holds the fact, and recovery reads it back from there.
        bool io_suspended = false;
    };
    using EntryPtr = std::shared_ptr<Entry>;

    Result<Sandbox, Failure> do_create(const EntryPtr& entry, const CreateRequest& request);
    Result<Sandbox, Failure> do_pause(const EntryPtr& entry);
    Result<Sandbox, Failure> do_resume(const EntryPtr& entry);
    Result<Done, Failure> do_destroy(const EntryPtr& entry);
    Result<TemplateInfo, Failure> do_flatten(const EntryPtr& entry, const std::string& template_name);
    Result<Sandbox, Failure> do_fork(const EntryPtr& source, const EntryPtr& child);
    Result<TransferStats, Failure> do_export(const EntryPtr& entry, bool compress,
                                     const ExportBegin& begin);
    Result<Sandbox, Failure> do_import(const EntryPtr& entry, const ImportOptions& options,
                               const ReadBody& read_body);
    struct TemplateMatch {
        std::string name;
        TemplateIdentity identity;  // with its sha256
    };
    // The template in templates_dir whose content has the archive's digest, or 409
    // template_mismatch naming the digest.
    Result<TemplateMatch, Failure> find_template_by_digest(const archive::Header& header,
                                                   const std::string& what);
    // fork.cpp: copies the source's CoW for `to`; a running source is suspended meanwhile.
    Result<std::unique_ptr<PendingCopy>, Failure> copy_source_cow(const EntryPtr& source,
                                                          const Sandbox& from,
                                                          const std::string& to,
                                                          const std::string& what);

    EntryPtr find(const std::string& id) const;
    // A new sandbox's entry, not ready (invisible to reads) until settle(); refused (400) when
    // the id is not a valid name and (409) when it is taken. settle() makes it visible, or
    // removes it when its create, fork or import failed.
    Result<EntryPtr, Failure> reserve(const std::string& id, const std::string& what);
    void settle(const EntryPtr& entry, bool made);
    // The new sandbox's folder, for fork and import: 409 already_exists when it is there.
    Result<Done, Failure> make_sandbox_dir(const std::string& id, const std::string& what);
    // Runs fn on the entry's strand, counts it in flight, logs one line and records metrics.
    template <class T>
    void run_on_strand(const EntryPtr& entry, std::string op, std::function<Result<T, Failure>()> fn,
                       Callback<T> done);
    Sandbox snapshot_of(const EntryPtr& entry) const;
    // What reads show: the record and what the kernel is doing with it now. mu_ held.
    static Sandbox view_of(const Entry& entry);
    // 507 insufficient_storage when the space watcher refuses new work now.
    std::optional<Failure> check_space(const std::string& what) const;
    void release_origin_of(const EntryPtr& entry, const OriginSpec& origin);
    Result<void> commit(const EntryPtr& entry, const Sandbox& next);
    std::optional<Failure> check_kernel() const;
    // TemplateDigests' callback: writes a version's new-found digest into its sandboxes' records.
    void record_digest(const std::string& path, const TemplateIdentity& version);
    // recovery.cpp: records whose digest was pending at the last stop get it, or a read.
    void resume_pending_digests();
    // 409 invalid_state when a paused sandbox's device is live, so its CoW may still change;
    // `then` is the operation the message tells the client to retry.
    std::optional<Failure> check_no_live_device(const std::string& id, const std::string& what,
                                                std::string_view then) const;
    std::optional<Failure> check_tcmu(const OriginSpec& origin, const std::string& what) const;
    std::size_t sweep_flatten_temps(std::vector<std::string>& problems);
    std::string make_id() const;
    // Whether a live device named for this sandbox carries another state dir's tag (device
    // names are host-wide; such a device is never ours to remove).
    Result<bool> held_by_another_state_dir(const std::string& id);
    std::string template_path(const std::string& name) const;
    // templates.cpp: the image a create of `name` uses now, checked, with its digest.
    Result<TemplateIdentity, Failure> identify_template(const std::string& name, const std::string& what);
    // Whether a loop-origin sandbox's template is still the image it was made over: the
    // identity to record from now on (nullopt for other origins), or 409 template_changed.
    Result<std::optional<TemplateIdentity>, Failure> verify_template(const Sandbox& sb,
                                                             const std::string& what);

    Platform& platform_;
    StateStore& store_;
    Options options_;
    boost::asio::thread_pool& workers_;
    boost::asio::thread_pool queries_{2};
    Metrics& metrics_;
    TemplateDigests digests_;
    SpaceWatcher* space_ = nullptr;

    mutable std::mutex mu_;  // guards entries_ and every Entry's record
    std::map<std::string, EntryPtr> entries_;

    mutable std::mutex idle_mu_;
    std::condition_variable idle_cv_;
    std::size_t in_flight_ = 0;
};

// <name>.img.tmp-XXXXXX, the temp file a flatten writes before renaming it to <name>.img.
bool is_flatten_temp_name(std::string_view file);

bool is_valid_name(
    std::string_view name);  // ids and template names: [A-Za-z0-9][A-Za-z0-9_-]{0,63}

}  // namespace wrenn::agent
