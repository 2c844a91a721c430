#include "agent/sandboxes/sandbox_manager.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/post.hpp>

namespace wrenn::agent {

namespace {

std::string_view usage_status(SnapshotUsage::State state) {
    switch (state) {
        case SnapshotUsage::State::Active:
            return "active";
        case SnapshotUsage::State::Invalid:
            return "invalid";
        case SnapshotUsage::State::Overflow:
            return "overflow";
        case SnapshotUsage::State::Other:
            return "unknown";
    }
    return "unknown";
}

}  // namespace

SandboxManager::SandboxManager(Platform& platform, StateStore& store, Options options,
                               boost::asio::thread_pool& workers, Metrics& metrics)
    : table_(store, workers),
      runner_(table_, metrics),
      suspensions_(table_, platform),
      digests_(store.state_dir(), platform),
      context_{platform, store,   table_,  runner_,           suspensions_,
               digests_, guards_, metrics, std::move(options)},
      transfers_(context_.options.max_transfers) {
    digests_.start([this](const std::string& path, const TemplateIdentity& version) {
        record_digest(context_, path, version);
    });
}

SandboxManager::~SandboxManager() {
    shutdown();
}

void SandboxManager::shutdown() {
    digests_.stop();  // no digest is recorded from here on: the next start asks again
    wait_idle();
    transfers_.join();
    queries_.join();
    suspensions_.stop();  // a device still failing to resume is resumed by the next start
}

Result<RecoveryReport> SandboxManager::recover() {
    return agent::recover(context_);
}

Result<RecoveryReport> SandboxManager::cleanup_stale() {
    return agent::cleanup_stale(context_);
}

template <class T, class Fn>
void SandboxManager::run_new(const std::string& id, const std::string& op, const std::string& what,
                             Fn fn, Callback<T> done) {
    auto reserved = table_.reserve(id, what);
    if (!reserved) {
        done(std::move(reserved).error());
        return;
    }
    const EntryPtr entry = reserved.value();
    runner_.run<T>(
        entry, op,
        [this, entry, fn = std::move(fn)] {
            auto result = fn(entry);
            table_.settle(entry, result.ok());
            return result;
        },
        std::move(done));
}

template <class T, class Fn>
void SandboxManager::run_existing(const std::string& id, const std::string& op, Fn fn,
                                  Callback<T> done) {
    auto entry = table_.find(id);
    if (!entry) {
        done(failure(FailureKind::NotFound, op + " " + id, 0, "no such sandbox"));
        return;
    }
    runner_.run<T>(
        entry, op, [entry, fn = std::move(fn)] { return fn(entry); }, std::move(done));
}

void SandboxManager::create(CreateRequest request, Callback<Sandbox> done) {
    if (request.id.empty()) {
        request.id = new_sandbox_id();
    }
    if (auto bad = check_name(request.id, "id", "create sandbox")) {
        done(std::move(*bad));
        return;
    }
    const std::string id = request.id;
    run_new<Sandbox>(
        id, "create", "create " + id,
        [this, request = std::move(request)](const EntryPtr& entry) {
            return create_sandbox(context_, entry, request);
        },
        std::move(done));
}

void SandboxManager::pause(const std::string& id, Callback<Sandbox> done) {
    run_existing<Sandbox>(
        id, "pause", [this](const EntryPtr& entry) { return pause_sandbox(context_, entry); },
        std::move(done));
}

void SandboxManager::resume(const std::string& id, Callback<Sandbox> done) {
    run_existing<Sandbox>(
        id, "resume", [this](const EntryPtr& entry) { return resume_sandbox(context_, entry); },
        std::move(done));
}

void SandboxManager::destroy(const std::string& id, Callback<Done> done) {
    run_existing<Done>(
        id, "destroy", [this](const EntryPtr& entry) { return destroy_sandbox(context_, entry); },
        std::move(done));
}

void SandboxManager::flatten(const std::string& id, const std::string& template_name,
                             Callback<TemplateInfo> done) {
    run_existing<TemplateInfo>(
        id, "flatten",
        [this, template_name](const EntryPtr& entry) {
            return flatten_sandbox(context_, entry, template_name);
        },
        std::move(done));
}

void SandboxManager::fork(const std::string& id, std::string new_id, Callback<Sandbox> done) {
    if (new_id.empty()) {
        new_id = new_sandbox_id();
    }
    const std::string what = "fork " + id + " into " + new_id;
    if (auto bad = check_name(new_id, "id", what)) {
        done(std::move(*bad));
        return;
    }
    auto source = table_.find(id);
    if (!source) {
        done(failure(FailureKind::NotFound, what, 0, "no such sandbox"));
        return;
    }
    auto reserved = table_.reserve(new_id, what);
    if (!reserved) {
        done(std::move(reserved).error());
        return;
    }
    // On the source's strand: its pause, resume or destroy waits for the fork, and the child is
    // invisible to reads until it is complete.
    runner_.run<Sandbox>(
        source, "fork",
        [this, source, child = reserved.value()] {
            auto result = fork_sandbox(context_, source, child);
            table_.settle(child, result.ok());
            return result;
        },
        std::move(done));
}

template <class T>
std::optional<Callback<T>> SandboxManager::take_transfer_slot(const std::string& what,
                                                              Callback<T>& done) {
    auto slot = transfers_.try_acquire();
    if (!slot) {
        done(failure(FailureKind::TooManyTransfers, what, EBUSY,
                     std::to_string(transfers_.max()) +
                         " transfers (exports, imports, template uploads and downloads) are "
                         "running, as many as --max-transfers "
                         "allows; retry when one has ended"));
        return std::nullopt;
    }
    // The slot comes back before the answer goes out, so that a client may start the next
    // transfer as soon as it has it (copies of the callback share one holder).
    auto holder = std::make_shared<std::optional<TransferSlots::Slot>>(std::move(*slot));
    return Callback<T>([holder, done = std::move(done)](Result<T, Failure> result) {
        holder->reset();
        done(std::move(result));
    });
}

void SandboxManager::export_sandbox(const std::string& id, bool compress, ExportBegin begin,
                                    Callback<TransferStats> done) {
    auto entry = table_.find(id);
    if (!entry) {
        done(failure(FailureKind::NotFound, "export " + id, 0, "no such sandbox"));
        return;
    }
    auto answer = take_transfer_slot("export " + id, done);
    if (!answer) {
        return;
    }
    runner_.run_transfer<TransferStats, PreparedExport>(
        entry, "export", transfers_.pool(),
        [this, entry, compress] { return prepare_export(context_, entry, compress); },
        [this, begin = std::move(begin)](PreparedExport& prepared) {
            return stream_export(context_, prepared, begin);
        },
        std::move(*answer));
}

void SandboxManager::import_sandbox(const std::string& id, ImportOptions options,
                                    ReadBody read_body, Callback<Sandbox> done) {
    const std::string what = "import " + id;
    auto answer = take_transfer_slot(what, done);
    if (!answer) {
        return;
    }
    auto reserved = table_.reserve(id, what);
    if (!reserved) {
        (*answer)(std::move(reserved).error());
        return;
    }
    const EntryPtr entry = reserved.value();
    // The new entry is invisible until the import succeeds; held, so that a digest recorded
    // meanwhile waits for the record.
    runner_.run_transfer<Sandbox, Done>(
        entry, "import", transfers_.pool(),
        [] {
            return OperationRunner::Prepared<Done>{std::make_shared<Done>(), true};
        },
        [this, entry, options, read_body = std::move(read_body)](Done&) {
            auto result = agent::import_sandbox(context_, entry, options, read_body);
            table_.settle(entry, result.ok());
            return result;
        },
        std::move(*answer));
}

void SandboxManager::get_live(const std::string& id, Callback<Sandbox> done) {
    boost::asio::post(queries_, [this, id, done = std::move(done)] {
        auto entry = table_.find(id);
        if (!entry) {
            done(failure(FailureKind::NotFound, "get " + id, 0, "no such sandbox"));
            return;
        }
        auto [sb, generation] = table_.view(entry);
        if (sb.state == SandboxState::Running) {
            // A status ioctl: cheap, and not queued behind this sandbox's operations, which is
            // why it may race one: the answer is written back only onto the record it was read
            // for, never onto one a pause or destroy made meanwhile.
            auto usage = context_.platform.snapshot_usage(id);
            if (usage) {
                sb = table_.update_if_unchanged(entry, generation, [&](Sandbox& record) {
                    record.cow_allocated_bytes = usage->allocated_bytes;
                    record.cow_status = usage_status(usage->state);
                });
            } else {
                spdlog::debug("sandbox={} op=get live status unknown: {}", id,
                              usage.error().message());
            }
        }
        done(std::move(sb));
    });
}

std::optional<Sandbox> SandboxManager::get(const std::string& id) const {
    return table_.get(id);
}

std::vector<Sandbox> SandboxManager::list() const {
    return table_.list();
}

void SandboxManager::list_templates(Callback<std::vector<TemplateInfo>> done) {
    boost::asio::post(queries_,
                      [this, done = std::move(done)] { done(agent::list_templates(context_)); });
}

void SandboxManager::template_info(const std::string& name, Callback<TemplateInfo> done) {
    boost::asio::post(queries_, [this, name, done = std::move(done)] {
        done(agent::template_info(context_, name));
    });
}

void SandboxManager::upload_template(UploadRequest request, ReadBody read_body,
                                     Callback<TemplateInfo> done) {
    auto answer = take_transfer_slot("upload template " + request.name, done);
    if (!answer) {
        return;
    }
    boost::asio::post(transfers_.pool(),
                      [this, request = std::move(request), read_body = std::move(read_body),
                       done = std::move(*answer)] {
                          done(agent::upload_template(context_, request, read_body));
                      });
}

void SandboxManager::download_template(const std::string& name, bool compress, ExportBegin begin,
                                       Callback<TransferStats> done) {
    auto answer = take_transfer_slot("download template " + name, done);
    if (!answer) {
        return;
    }
    boost::asio::post(transfers_.pool(),
                      [this, name, compress, begin = std::move(begin), done = std::move(*answer)] {
                          auto prepared = prepare_download(context_, name, compress);
                          if (!prepared) {
                              return done(prepared.error());
                          }
                          done(stream_download(context_, *prepared, begin));
                      });
}

void SandboxManager::delete_template(const std::string& name, Callback<Done> done) {
    boost::asio::post(queries_, [this, name, done = std::move(done)] {
        done(agent::delete_template(context_, name));
    });
}

std::map<std::string, std::size_t> SandboxManager::count_by_state() const {
    std::map<std::string, std::size_t> counts;
    for (const auto& sb : list()) {
        ++counts[std::string(to_string(sb.state))];
    }
    return counts;
}

std::map<std::string, std::size_t> SandboxManager::io_suspended_by() const {
    std::map<std::string, std::size_t> counts;
    for (std::size_t r = 0; r < kSuspendReasons; ++r) {
        counts[std::string(to_string(static_cast<SuspendReason>(r)))] = 0;
    }
    for (const auto& sb : list()) {
        for (const auto& reason : sb.io_suspended_by) {
            ++counts[reason];
        }
    }
    return counts;
}

std::size_t SandboxManager::suspend_for_space() {
    return agent::suspend_for_space(context_);
}

std::size_t SandboxManager::resume_after_space() {
    return agent::resume_after_space(context_);
}

std::size_t SandboxManager::suspended_for_space() const {
    return agent::suspended_for_space(context_);
}

std::vector<std::pair<std::string, std::uint64_t>> SandboxManager::cow_disk_usage() const {
    return agent::cow_disk_usage(context_);
}

void SandboxManager::wait_idle() {
    runner_.wait_idle();
}

bool SandboxManager::wait_idle_for(std::chrono::milliseconds limit) {
    return runner_.wait_idle_for(limit);
}

std::size_t SandboxManager::in_flight() const {
    return runner_.in_flight();
}

}  // namespace wrenn::agent
