#pragma once

#include <boost/asio/thread_pool.hpp>
#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "agent/sandboxes/operations.hpp"
#include "agent/table/transfer_slots.hpp"

namespace wrenn::agent {

// The sandbox lifecycle, as the API and the daemon see it: a façade over the table of sandboxes
// (SandboxTable), the runner that puts each operation on its sandbox's strand
// (OperationRunner), and the operations themselves (operations.hpp, one file each).
// Operations on one sandbox run one at a time; operations on different sandboxes run in
// parallel on the worker pool. Reads (get, list) answer from memory and never wait for a
// kernel operation. Every `done` is called exactly once, possibly from a worker thread.
class SandboxManager : public SpaceActions {
  public:
    using Options = SandboxOptions;
    using ExportBegin = agent::ExportBegin;
    using ReadBody = agent::ReadBody;
    using ImportOptions = agent::ImportOptions;

    SandboxManager(Platform& platform, StateStore& store, Options options,
                   boost::asio::thread_pool& workers, Metrics& metrics);
    ~SandboxManager() override;
    SandboxManager(const SandboxManager&) = delete;
    SandboxManager& operator=(const SandboxManager&) = delete;

    // Startup (recovery.cpp): reads every record, adopts as running every sandbox whose device
    // (ours) is live over its CoW, pauses running ones whose device is gone, removes every
    // other device of ours, unfinished creates, flatten temp files and copies left by a killed
    // export. Devices of other state dirs are left alone. Fails, changing nothing, when the
    // records or the device list cannot be read. Blocking; call before serving.
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
    // a point-in-time copy of the source's CoW. A running source's I/O is suspended only while
    // its CoW is copied, at most Options::fork_max_stall. Runs on the source's strand.
    void fork(const std::string& id, std::string new_id, Callback<Sandbox> done);
    // Streams the sandbox's archive (docs/archive.md) on the transfer pool (at most
    // Options::max_transfers at once, else 503). A paused sandbox is held throughout (its
    // resume, destroy and flatten wait); a running one only while a point-in-time copy of its
    // CoW is made, which the stream then reads. `begin` is called once every check passed;
    // `done` then reports how the stream ended. A failure before `begin` means nothing was sent.
    void export_sandbox(const std::string& id, bool compress, ExportBegin begin,
                        Callback<TransferStats> done);
    // A new paused sandbox `id` from an archive read through `read_body` (blocking reads on the
    // transfer pool, at most Options::max_transfers at once), over the local template with the
    // archive's digest. A refused or broken archive leaves nothing; the record is written last.
    void import_sandbox(const std::string& id, ImportOptions options, ReadBody read_body,
                        Callback<Sandbox> done);
    // The sandbox with live CoW usage from the kernel (runs on the query pool, not the strand).
    void get_live(const std::string& id, Callback<Sandbox> done);

    [[nodiscard]] std::optional<Sandbox> get(const std::string& id) const;
    [[nodiscard]] std::vector<Sandbox> list() const;
    // The template routes (agent/catalog): reads on the query pool, the image's bytes on the
    // transfer pool (at most Options::max_transfers at once with exports and imports, else 503).
    void list_templates(Callback<std::vector<TemplateInfo>> done);
    void template_info(const std::string& name, Callback<TemplateInfo> done);
    void upload_template(UploadRequest request, ReadBody read_body, Callback<TemplateInfo> done);
    // `begin` is called once the checks passed and the digest is known; a failure before it
    // means nothing was sent.
    void download_template(const std::string& name, bool compress, ExportBegin begin,
                           Callback<TransferStats> done);
    void delete_template(const std::string& name, Callback<Done> done);
    [[nodiscard]] std::map<std::string, std::size_t> count_by_state() const;

    // With a watcher set, creates, resumes and flattens answer 507 insufficient_storage while
    // it refuses new work. Set before serving; the watcher must outlive the operations.
    void set_space_watcher(SpaceWatcher* watcher) { context_.space = watcher; }
    std::size_t suspend_for_space() override;
    std::size_t resume_after_space() override;
    [[nodiscard]] std::size_t suspended_for_space() const override;
    // Sandboxes whose device could not be resumed and is being retried (healthz: degraded).
    [[nodiscard]] std::size_t resumes_failing() const { return suspensions_.failing(); }
    // Running sandboxes whose I/O is held suspended, by who holds it (every reason listed).
    [[nodiscard]] std::map<std::string, std::size_t> io_suspended_by() const;
    // Disk space each sandbox's CoW file takes now (allocated blocks), by sandbox id.
    [[nodiscard]] std::vector<std::pair<std::string, std::uint64_t>> cow_disk_usage() const;

    // Blocks until no operation is in flight (SIGTERM: stop accepting, then drain).
    void wait_idle();
    // The same for at most `limit`: whether nothing is in flight.
    [[nodiscard]] bool wait_idle_for(std::chrono::milliseconds limit);
    // Waits for operations and queries in flight and stops the query pool: call before the
    // io_context their callbacks answer on is destroyed.
    void shutdown();
    [[nodiscard]] std::size_t in_flight() const;

    [[nodiscard]] const StateStore& store() const { return context_.store; }

  private:
    // Reserves `id` and runs `fn` on the new entry's strand (create, import); the entry becomes
    // visible when fn succeeds and goes when it fails.
    template <class T, class Fn>
    void run_new(const std::string& id, const std::string& op, const std::string& what, Fn fn,
                 Callback<T> done);
    // Runs `fn` on the strand of the existing sandbox `id`, or answers 404.
    template <class T, class Fn>
    void run_existing(const std::string& id, const std::string& op, Fn fn, Callback<T> done);
    // A transfer slot for `done`'s operation: `done` wrapped to give it back, or nullopt once
    // `done` has answered 503 too_many_transfers.
    template <class T>
    std::optional<Callback<T>> take_transfer_slot(const std::string& what, Callback<T>& done);

    SandboxTable table_;
    OperationRunner runner_;
    Suspensions suspensions_;
    TemplateDigests digests_;
    TemplateGuards guards_;
    OperationContext context_;
    TransferSlots transfers_;
    boost::asio::thread_pool queries_{2};
};

}  // namespace wrenn::agent
