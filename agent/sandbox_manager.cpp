#include "agent/sandbox_manager.hpp"

#include <dirent.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/post.hpp>
#include <cerrno>
#include <random>

#include "dm/snapshot_format.hpp"

namespace wrenn::agent {

namespace asio = boost::asio;

bool is_valid_name(std::string_view name) {
    return dm::is_valid_sandbox_id(name);
}

namespace {

// What a failed device removal means to the client: held open is something they can fix.
Failure removal_failure(Error error) {
    const FailureKind kind =
        error.code() == EBUSY ? FailureKind::DeviceBusy : FailureKind::Internal;
    return Failure{kind, std::move(error)};
}

}  // namespace

// A TCMU origin the API may not attach, as the client sees it: a bad value is 400, a refusal by
// the allowlist 403 (tcmu_not_allowed), a kernel without TCMU 503.
std::optional<Failure> SandboxManager::check_tcmu(const OriginSpec& origin,
                                                  const std::string& what) const {
    if (origin.type != OriginSpec::Type::Tcmu) {
        return std::nullopt;
    }
    auto allowed = platform_.check_tcmu_origin(origin);
    if (allowed) {
        return std::nullopt;
    }
    const int code = allowed.error().code();
    const FailureKind kind = code == EACCES || code == EPERM    ? FailureKind::TcmuNotAllowed
                             : code == EINVAL || code == ENOENT ? FailureKind::InvalidRequest
                             : code == ENODEV                   ? FailureKind::Unavailable
                                                                : FailureKind::Internal;
    return Failure{kind, std::move(allowed).error().within(what)};
}

namespace {

SnapshotUsage::State usage_state_of(const Result<SnapshotUsage>& usage) {
    return usage ? usage->state : SnapshotUsage::State::Active;
}

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
                               asio::thread_pool& workers, Metrics& metrics)
    : platform_(platform),
      store_(store),
      options_(std::move(options)),
      workers_(workers),
      metrics_(metrics),
      digests_(store.state_dir(), platform) {
    digests_.start([this](const std::string& path, const TemplateIdentity& version) {
        record_digest(path, version);
    });
}

SandboxManager::~SandboxManager() {
    shutdown();
}

void SandboxManager::shutdown() {
    digests_.stop();  // no digest is recorded from here on: the next start asks again
    wait_idle();
    queries_.join();
}

SandboxManager::EntryPtr SandboxManager::find(const std::string& id) const {
    std::lock_guard lock(mu_);
    auto it = entries_.find(id);
    if (it == entries_.end() || !it->second->ready || it->second->gone) {
        return nullptr;
    }
    return it->second;
}

// Lets go of the entry's origin reference if it holds one. The release itself (a TCMU detach
// can take seconds) runs outside mu_, which reads on the io_context take.
void SandboxManager::release_origin_of(const EntryPtr& entry, const OriginSpec& origin) {
    bool held = false;
    {
        std::lock_guard lock(mu_);
        held = std::exchange(entry->origin_held, false);
    }
    if (held) {
        platform_.release_origin(origin);
    }
}

Sandbox SandboxManager::snapshot_of(const EntryPtr& entry) const {
    std::lock_guard lock(mu_);
    return entry->record;
}

// Writes the record, then makes it the one reads see. On a failed write the in-memory record
// still moves on: it says what the kernel now has, and the next start repairs the file.
Result<void> SandboxManager::commit(const EntryPtr& entry, const Sandbox& next) {
    auto written = store_.write_record(next);
    std::lock_guard lock(mu_);
    if (next.state != entry->record.state) {
        entry->io_suspended = false;  // its device was removed, or is a new one
    }
    entry->record = next;
    ++entry->generation;
    return written;
}

// Paused, yet a device of this name is live (a record write that failed, or someone's
// dmsetup): its CoW may still be changing under a copy of it.
std::optional<Failure> SandboxManager::check_no_live_device(const std::string& id,
                                                            const std::string& what,
                                                            std::string_view then) const {
    auto info = platform_.snapshot_info(id);
    if (!info) {
        return internal(std::move(info).error().within(what));
    }
    if (info->has_value()) {
        return failure(FailureKind::InvalidState, what, 0,
                       "a device " + dm::device_name(id) +
                           " is live for this sandbox, so its CoW may still change; resume and "
                           "pause it, or remove the device, then " +
                           std::string(then));
    }
    return std::nullopt;
}

std::optional<Failure> SandboxManager::check_kernel() const {
    const KernelSupport support = platform_.support();
    if (!support.device_mapper) {
        return failure(FailureKind::Unavailable, "device-mapper is not usable", 0,
                       support.device_mapper_reason);
    }
    if (!support.loop) {
        return failure(FailureKind::Unavailable, "loop devices are not usable", 0,
                       support.loop_reason);
    }
    return std::nullopt;
}

std::string SandboxManager::make_id() const {
    static constexpr char kAlphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    thread_local std::mt19937_64 rng{std::random_device{}()};
    std::uniform_int_distribution<std::size_t> pick(0, sizeof kAlphabet - 2);
    std::string id = "sb-";
    for (int i = 0; i < 10; ++i) {
        id += kAlphabet[pick(rng)];
    }
    return id;
}

template <class T>
void SandboxManager::run_on_strand(const EntryPtr& entry, std::string op,
                                   std::function<Result<T, Failure>()> fn, Callback<T> done) {
    {
        std::lock_guard lock(idle_mu_);
        ++in_flight_;
    }
    const std::string id = entry->record.id;
    asio::post(entry->strand, [this, entry = entry, id, op = std::move(op), fn = std::move(fn),
                               done = std::move(done)]() mutable {
        const auto start = std::chrono::steady_clock::now();
        Result<T, Failure> outcome = [&]() -> Result<T, Failure> {
            {
                std::lock_guard lock(mu_);
                if (entry->gone) {
                    return failure(FailureKind::NotFound, op + " " + id, 0, "no such sandbox");
                }
            }
            return fn();
        }();
        const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
        const std::string code = outcome ? "ok" : std::string(failure_code(outcome.error().kind));
        metrics_.observe(op, took, code);
        if (outcome) {
            spdlog::info("sandbox={} op={} duration_ms={:.1f} result=ok", id, op,
                         took.count() * 1000);
        } else {
            spdlog::warn("sandbox={} op={} duration_ms={:.1f} result={} error=\"{}\"", id, op,
                         took.count() * 1000, code, outcome.error().error.message());
        }
        done(std::move(outcome));
        // Let go of what the operation holds (its entry and its strand among them) before it
        // counts as done: once wait_idle() returns, the manager and the worker pool may go.
        done = nullptr;
        fn = nullptr;
        entry.reset();
        std::lock_guard lock(idle_mu_);
        if (--in_flight_ == 0) {
            idle_cv_.notify_all();
        }
    });
}

// sandbox_transfer.cpp's export runs here too.
template void SandboxManager::run_on_strand<TransferStats>(const EntryPtr&, std::string,
                                                           std::function<Result<TransferStats, Failure>()>,
                                                           Callback<TransferStats>);

// ---- create -------------------------------------------------------------------------------

Result<SandboxManager::EntryPtr, Failure> SandboxManager::reserve(const std::string& id,
                                                          const std::string& what) {
    if (!is_valid_name(id)) {
        return failure(FailureKind::InvalidRequest, what, 0,
                       "id must match [A-Za-z0-9][A-Za-z0-9_-]{0,63}");
    }
    auto entry = std::make_shared<Entry>(workers_);
    entry->record.id = id;
    std::lock_guard lock(mu_);
    if (!entries_.emplace(id, entry).second) {
        return failure(FailureKind::AlreadyExists, what, 0, "a sandbox with this id exists");
    }
    return entry;
}

Result<Done, Failure> SandboxManager::make_sandbox_dir(const std::string& id, const std::string& what) {
    if (auto dir = store_.create_sandbox_dir(id); !dir) {
        // A folder with no entry (a leftover) is refused as an id in use, never written into.
        const FailureKind kind =
            dir.error().code() == EEXIST ? FailureKind::AlreadyExists : FailureKind::Internal;
        return Failure{kind, std::move(dir).error().within(what)};
    }
    return Done{};
}

void SandboxManager::settle(const EntryPtr& entry, bool made) {
    std::lock_guard lock(mu_);
    if (made) {
        entry->ready = true;
    } else {
        entry->gone = true;
        entries_.erase(entry->record.id);
    }
}

void SandboxManager::create(CreateRequest request, Callback<Sandbox> done) {
    if (request.id.empty()) {
        request.id = make_id();
    }
    if (!is_valid_name(request.id)) {
        // Not echoed: an invalid id may hold anything, a newline for the log among it.
        done(failure(FailureKind::InvalidRequest, "create sandbox", 0,
                     "id must match [A-Za-z0-9][A-Za-z0-9_-]{0,63}"));
        return;
    }
    auto reserved = reserve(request.id, "create " + request.id);
    if (!reserved) {
        done(reserved.error());
        return;
    }
    run_on_strand<Sandbox>(
        reserved.value(), "create",
        [this, entry = reserved.value(), request = std::move(request)] {
            auto outcome = do_create(entry, request);
            settle(entry, outcome.ok());
            return outcome;
        },
        std::move(done));
}

Result<Sandbox, Failure> SandboxManager::do_create(const EntryPtr& entry, const CreateRequest& request) {
    const std::string& id = request.id;
    const std::string what = "create " + id;
    if (auto missing = check_kernel()) {
        missing->error = std::move(missing->error).within(what);
        return *missing;
    }
    if (auto full = check_space(what)) {
        return *full;
    }
    Sandbox sb;
    sb.id = id;
    if (request.tcmu_origin) {
        sb.origin = *request.tcmu_origin;
    } else {
        if (!is_valid_name(request.template_name)) {
            return failure(FailureKind::InvalidRequest, what, 0,
                           "template must match [A-Za-z0-9][A-Za-z0-9_-]{0,63}");
        }
        sb.template_name = request.template_name;
        auto identity = identify_template(request.template_name, what);
        if (!identity) {
            return identity.error();
        }
        sb.origin = OriginSpec{OriginSpec::Type::Loop,
                               template_path(request.template_name),
                               {},
                               std::nullopt,
                               identity.value()};
    }

    if (auto refused = check_tcmu(sb.origin, what)) {
        return *refused;
    }
    auto origin = platform_.acquire_origin(sb.origin);
    if (!origin) {
        return origin_failure(sb.origin, std::move(origin).error().within(what));
    }
    auto release_origin = [&] { platform_.release_origin(sb.origin); };
    if (sb.origin.identity && origin->size_bytes != sb.origin.identity->size_bytes / 512 * 512) {
        // The loop was bound to this inode earlier, at another size: the image was rewritten in
        // place while sandboxes use it.
        release_origin();
        return failure(FailureKind::TemplateChanged, what, 0,
                       "template '" + sb.template_name + "' is " +
                           std::to_string(sb.origin.identity->size_bytes) +
                           " bytes but its shared loop serves " +
                           std::to_string(origin->size_bytes) +
                           ": it was rewritten in place while sandboxes use it; replace "
                           "templates by renaming a new file over them, never in place");
    }
    sb.origin_device = origin->device;
    sb.origin_size_bytes = origin->size_bytes;
    sb.cow_path = store_.cow_path(id);
    sb.cow_size_bytes = dm::cow_size_for_origin(origin->size_bytes);

    if (auto files = store_.create_sandbox_files(id, sb.cow_size_bytes); !files) {
        release_origin();
        const FailureKind kind =
            files.error().code() == EEXIST ? FailureKind::AlreadyExists : FailureKind::Internal;
        return Failure{kind, std::move(files).error().within(what)};
    }
    auto device = platform_.create_snapshot(id, origin->device, origin->size_bytes, sb.cow_path);
    if (!device) {
        release_origin();
        if (auto removed = store_.remove_sandbox(id); !removed) {
            spdlog::error("sandbox={} op=create cleanup failed: {}", id, removed.error().message());
        }
        return internal(std::move(device).error().within(what));
    }
    sb.device = *device;
    sb.cow_status = "active";
    sb.state = SandboxState::Running;
    sb.created_at = sb.updated_at = utc_now();

    // The record is written last: until it exists, a crash leaves an unfinished folder that
    // the next start removes together with its device.
    if (auto written = commit(entry, sb); !written) {
        if (auto removed = platform_.remove_snapshot(id); !removed) {
            spdlog::error("sandbox={} op=create cleanup failed: {}", id, removed.error().message());
        }
        release_origin();
        (void)store_.remove_sandbox(id);
        return internal(std::move(written).error().within(what));
    }
    std::lock_guard lock(mu_);
    entry->origin_held = true;
    return sb;
}

// ---- pause --------------------------------------------------------------------------------

void SandboxManager::pause(const std::string& id, Callback<Sandbox> done) {
    auto entry = find(id);
    if (!entry) {
        done(failure(FailureKind::NotFound, "pause " + id, 0, "no such sandbox"));
        return;
    }
    run_on_strand<Sandbox>(
        entry, "pause", [this, entry] { return do_pause(entry); }, std::move(done));
}

Result<Sandbox, Failure> SandboxManager::do_pause(const EntryPtr& entry) {
    Sandbox sb = snapshot_of(entry);
    const std::string what = "pause " + sb.id;
    if (sb.state != SandboxState::Running) {
        return failure(FailureKind::InvalidState, what, 0, "the sandbox is already paused");
    }
    // Last look at the usage while the device is there; a snapshot the kernel invalidated is
    // still paused (its CoW is kept), and resume will refuse it.
    auto usage = platform_.snapshot_usage(sb.id);
    if (usage) {
        sb.cow_allocated_bytes = usage->allocated_bytes;
    }

    // A failure to remove the device is fatal to the pause: nothing is released, the sandbox
    // stays running with its device, and the error is kept in its record.
    if (auto removed = platform_.remove_snapshot(sb.id);
        !removed && removed.error().code() != ENXIO) {
        Failure f = removal_failure(std::move(removed).error().within(what));
        sb.last_error = f.error.message();
        sb.updated_at = utc_now();
        if (auto written = commit(entry, sb); !written) {
            spdlog::error("sandbox={} op=pause: {}", sb.id, written.error().message());
        }
        return f;
    }
    release_origin_of(entry, sb.origin);
    sb.state = SandboxState::Paused;
    sb.device.clear();
    sb.origin_device.clear();
    sb.cow_status.clear();
    sb.last_error.reset();
    // The snapshot's last writes went through the CoW loop into the page cache; a record that
    // says paused promises they are on disk (a flatten or a host crash comes next).
    if (auto synced = store_.sync_file(sb.cow_path); !synced) {
        Error error = std::move(synced).error().within(what + " (the device is removed)");
        sb.last_error = error.message();
        sb.updated_at = utc_now();
        (void)commit(entry, sb);
        return internal(error);
    }
    if (usage_state_of(usage) == SnapshotUsage::State::Invalid ||
        usage_state_of(usage) == SnapshotUsage::State::Overflow) {
        sb.last_error =
            "the kernel invalidated this snapshot before the pause; it cannot be resumed";
    }
    sb.updated_at = utc_now();
    if (auto written = commit(entry, sb); !written) {
        return internal(std::move(written).error().within(what + " (the device is removed)"));
    }
    return sb;
}

// ---- resume -------------------------------------------------------------------------------

void SandboxManager::resume(const std::string& id, Callback<Sandbox> done) {
    auto entry = find(id);
    if (!entry) {
        done(failure(FailureKind::NotFound, "resume " + id, 0, "no such sandbox"));
        return;
    }
    run_on_strand<Sandbox>(
        entry, "resume", [this, entry] { return do_resume(entry); }, std::move(done));
}

Result<Sandbox, Failure> SandboxManager::do_resume(const EntryPtr& entry) {
    Sandbox sb = snapshot_of(entry);
    const std::string what = "resume " + sb.id;
    if (sb.state != SandboxState::Paused) {
        return failure(FailureKind::InvalidState, what, 0, "the sandbox is running");
    }
    if (auto missing = check_kernel()) {
        missing->error = std::move(missing->error).within(what);
        return *missing;
    }
    if (auto full = check_space(what)) {
        return *full;
    }
    auto valid = platform_.cow_store_valid(sb.cow_path, sb.origin_size_bytes);
    if (!valid) {
        const FailureKind kind =
            valid.error().code() == 0 ? FailureKind::SnapshotInvalid : FailureKind::Internal;
        return Failure{kind, std::move(valid).error().within(what)};
    }
    if (!*valid) {
        return failure(FailureKind::SnapshotInvalid, what, 0,
                       "the kernel marked this CoW invalid (an I/O error or a full CoW); its "
                       "data cannot be used as a snapshot again");
    }
    // Before any device changes: the CoW means something only over the image it was made over.
    auto same_template = verify_template(sb, what);
    if (!same_template) {
        return same_template.error();
    }
    if (same_template.value()) {
        sb.origin.identity = *same_template.value();
    }
    // A device of the same name is stale (a crash between create and record, or someone
    // else's): it goes first, so the new one is built over exactly this CoW.
    auto info = platform_.snapshot_info(sb.id);
    if (!info) {
        return internal(std::move(info).error().within(what));
    }
    if (info->has_value()) {
        auto foreign = held_by_another_state_dir(sb.id);
        if (!foreign) {
            return internal(std::move(foreign).error().within(what));
        }
        if (*foreign) {
            return failure(FailureKind::InvalidState, what, 0,
                           "device " + dm::device_name(sb.id) +
                               " belongs to another wrenn-agent's state dir (its dm UUID carries "
                               "another tag), and device names are host-wide; stop or pause that "
                               "sandbox there, or destroy this one and create it under another id");
        }
        spdlog::warn("sandbox={} op=resume removing stale device first", sb.id);
        if (auto removed = platform_.remove_snapshot(sb.id);
            !removed && removed.error().code() != ENXIO) {
            return removal_failure(
                std::move(removed).error().within(what + ": remove stale device"));
        }
    }
    // The allowlist may have changed since the create, and the config with it.
    if (auto refused = check_tcmu(sb.origin, what)) {
        return *refused;
    }
    auto origin = platform_.acquire_origin(sb.origin);
    if (!origin) {
        return origin_failure(sb.origin, std::move(origin).error().within(what));
    }
    if (sb.origin_size_bytes != 0 && origin->size_bytes != sb.origin_size_bytes) {
        platform_.release_origin(sb.origin);
        return failure(FailureKind::TemplateChanged, what, 0,
                       "the origin is " + std::to_string(origin->size_bytes) +
                           " bytes now, the sandbox was made over " +
                           std::to_string(sb.origin_size_bytes) +
                           " bytes; put the original image back to use this sandbox again");
    }
    auto device = platform_.create_snapshot(sb.id, origin->device, origin->size_bytes, sb.cow_path);
    if (!device) {
        platform_.release_origin(sb.origin);
        return internal(std::move(device).error().within(what));
    }
    sb.state = SandboxState::Running;
    sb.device = *device;
    sb.cow_status = "active";
    sb.origin_device = origin->device;
    sb.origin_size_bytes = origin->size_bytes;
    sb.last_error.reset();
    sb.updated_at = utc_now();
    {
        std::lock_guard lock(mu_);
        entry->origin_held = true;
    }
    if (auto written = commit(entry, sb); !written) {
        // Running now, but the record says paused: the next start would remove the device as
        // stale. Say so; the sandbox is usable and the next pause rewrites the record.
        return internal(std::move(written).error().within(what + " (the device is up)"));
    }
    return sb;
}

// ---- destroy ------------------------------------------------------------------------------

void SandboxManager::destroy(const std::string& id, Callback<Done> done) {
    auto entry = find(id);
    if (!entry) {
        done(failure(FailureKind::NotFound, "destroy " + id, 0, "no such sandbox"));
        return;
    }
    run_on_strand<Done>(
        entry, "destroy", [this, entry] { return do_destroy(entry); }, std::move(done));
}

Result<bool> SandboxManager::held_by_another_state_dir(const std::string& id) {
    auto info = platform_.snapshot_info(id);
    if (!info) {
        return std::move(info).error();
    }
    if (!info->has_value()) {
        return false;
    }
    // Rare (a paused sandbox with a live device of its name): the whole list tells the owner.
    auto devices = platform_.list_snapshots();
    if (!devices) {
        return std::move(devices).error();
    }
    for (const auto& device : *devices) {
        if (device.id == id) {
            return device.owner == dm::DeviceOwner::Foreign;
        }
    }
    return false;
}

Result<Done, Failure> SandboxManager::do_destroy(const EntryPtr& entry) {
    Sandbox sb = snapshot_of(entry);
    const std::string what = "destroy " + sb.id;
    // Whatever the record says, a device of this name goes (a paused sandbox may have a stale
    // one), unless it is another state dir's: device names are host-wide.
    bool foreign = false;
    if (sb.state == SandboxState::Paused) {
        auto held = held_by_another_state_dir(sb.id);
        if (!held) {
            return internal(std::move(held).error().within(what));
        }
        foreign = *held;
        if (foreign) {
            spdlog::info("sandbox={} op=destroy device {} is another state dir's; left alone",
                         sb.id, dm::device_name(sb.id));
        }
    }
    if (auto removed = foreign ? Result<void>(success()) : platform_.remove_snapshot(sb.id);
        !removed && removed.error().code() != ENXIO) {
        Failure f = removal_failure(std::move(removed).error().within(what));
        sb.last_error = f.error.message();
        sb.updated_at = utc_now();
        (void)commit(entry, sb);
        return f;
    }
    release_origin_of(entry, sb.origin);
    if (auto removed = store_.remove_sandbox(sb.id); !removed) {
        // The device is gone; the files stay for a retry of the destroy.
        sb.state = SandboxState::Paused;
        sb.device.clear();
        sb.origin_device.clear();
        sb.last_error = removed.error().message();
        std::lock_guard lock(mu_);
        entry->record = sb;
        ++entry->generation;
        return internal(std::move(removed).error().within(what));
    }
    std::lock_guard lock(mu_);
    entry->gone = true;
    entries_.erase(sb.id);
    return Done{};
}

// ---- flatten ------------------------------------------------------------------------------

void SandboxManager::flatten(const std::string& id, const std::string& template_name,
                             Callback<TemplateInfo> done) {
    auto entry = find(id);
    if (!entry) {
        done(failure(FailureKind::NotFound, "flatten " + id, 0, "no such sandbox"));
        return;
    }
    run_on_strand<TemplateInfo>(
        entry, "flatten", [this, entry, template_name] { return do_flatten(entry, template_name); },
        std::move(done));
}

Result<TemplateInfo, Failure> SandboxManager::do_flatten(const EntryPtr& entry, const std::string& name) {
    Sandbox sb = snapshot_of(entry);
    const std::string what = "flatten " + sb.id + " into template " + name;
    if (!is_valid_name(name)) {
        return failure(FailureKind::InvalidRequest, what, 0,
                       "template must match [A-Za-z0-9][A-Za-z0-9_-]{0,63}");
    }
    if (sb.state != SandboxState::Paused) {
        return failure(FailureKind::InvalidState, what, 0,
                       "the sandbox is running; pause it first so its CoW is stable");
    }
    // The new template grows on the templates filesystem; when that is the state filesystem,
    // it would eat the room the running sandboxes' CoW files need.
    if (store_.same_filesystem(options_.templates_dir)) {
        if (auto full = check_space(what)) {
            return *full;
        }
    }
    if (auto live = check_no_live_device(sb.id, what, "flatten")) {
        return *live;
    }
    auto same_template = verify_template(sb, what);
    if (!same_template) {
        return same_template.error();
    }
    const std::string out = template_path(name);
    if (::access(out.c_str(), F_OK) == 0) {
        return failure(FailureKind::TemplateExists, what, 0, out + " exists; pick another name");
    }
    auto valid = platform_.cow_store_valid(sb.cow_path, sb.origin_size_bytes);
    if (!valid || !*valid) {
        Error err = valid ? Error(what, 0, "the kernel marked this CoW invalid")
                          : std::move(valid).error().within(what);
        const FailureKind kind =
            err.code() == 0 ? FailureKind::SnapshotInvalid : FailureKind::Internal;
        return Failure{kind, std::move(err)};
    }
    // A loop origin is read straight from its image file (so it can be reflinked); a TCMU
    // origin only exists as a block device, attached for the copy.
    std::string origin_path = sb.origin.path;
    const bool needs_device = sb.origin.type == OriginSpec::Type::Tcmu;
    if (needs_device) {
        if (auto refused = check_tcmu(sb.origin, what)) {
            return *refused;
        }
        auto origin = platform_.acquire_origin(sb.origin);
        if (!origin) {
            return origin_failure(sb.origin, std::move(origin).error().within(what));
        }
        origin_path = origin->device;
    }
    auto result = platform_.flatten(origin_path, sb.cow_path, out);
    if (needs_device) {
        platform_.release_origin(sb.origin);
    }
    if (!result) {
        const FailureKind kind = result.error().code() == EEXIST ? FailureKind::TemplateExists
                                 : result.error().code() == 0    ? FailureKind::SnapshotInvalid
                                                                 : FailureKind::Internal;
        return Failure{kind, std::move(result).error().within(what)};
    }
    TemplateInfo made{name, out, result->size_bytes, 0, {}, {}, {}};
    // The new image's digest is the origin's lists with only the changed chunks hashed (they
    // were just written, so read from the page cache) and their groups rehashed: O(changed).
    // Without the origin's list (its digest still pending, or a TCMU origin) the new image is read
    // in the background and shows as pending.
    if (auto identity = platform_.inspect_template(out)) {
        auto derived = Result<std::string>(Error("derive digest", ENOENT));
        if (same_template.value()) {
            const auto leaves =
                leaves_of_chunks(result->changed_chunks, result->chunk_bytes, identity->size_bytes);
            derived =
                digests_.derive(sb.origin.path, *same_template.value(), out, *identity, leaves);
            if (!derived && derived.error().code() != ENOENT) {
                spdlog::warn("sandbox={} op=flatten {}; reading it in the background", sb.id,
                             derived.error().message());
            }
        }
        if (derived) {
            made.digest = *derived;
        } else {
            digests_.request(out, *identity);
        }
    }
    return made;
}

// ---- reads --------------------------------------------------------------------------------

std::optional<Sandbox> SandboxManager::get(const std::string& id) const {
    std::lock_guard lock(mu_);
    auto it = entries_.find(id);
    if (it == entries_.end() || !it->second->ready || it->second->gone) {
        return std::nullopt;
    }
    return view_of(*it->second);
}

std::vector<Sandbox> SandboxManager::list() const {
    std::lock_guard lock(mu_);
    std::vector<Sandbox> out;
    out.reserve(entries_.size());
    for (const auto& [id, entry] : entries_) {
        if (entry->ready && !entry->gone) {
            out.push_back(view_of(*entry));
        }
    }
    return out;
}

std::map<std::string, std::size_t> SandboxManager::count_by_state() const {
    std::map<std::string, std::size_t> counts;
    for (const auto& sb : list()) {
        ++counts[std::string(to_string(sb.state))];
    }
    return counts;
}

void SandboxManager::get_live(const std::string& id, Callback<Sandbox> done) {
    asio::post(queries_, [this, id, done = std::move(done)] {
        auto entry = find(id);
        if (!entry) {
            done(failure(FailureKind::NotFound, "get " + id, 0, "no such sandbox"));
            return;
        }
        Sandbox sb;
        std::uint64_t generation = 0;
        {
            std::lock_guard lock(mu_);
            sb = view_of(*entry);
            generation = entry->generation;
        }
        if (sb.state == SandboxState::Running) {
            // A status ioctl: cheap, and not queued behind this sandbox's operations, which
            // is why it may race one: the answer is written back only onto the record it was
            // read for, never onto one a pause or destroy made meanwhile.
            auto usage = platform_.snapshot_usage(id);
            if (!usage) {
                spdlog::debug("sandbox={} op=get live status unknown: {}", id,
                              usage.error().message());
            }
            std::lock_guard lock(mu_);
            if (usage && entry->generation == generation) {
                entry->record.cow_allocated_bytes = usage->allocated_bytes;
                entry->record.cow_status = usage_status(usage->state);
            }
            sb = view_of(*entry);
        }
        done(std::move(sb));
    });
}

void SandboxManager::wait_idle() {
    std::unique_lock lock(idle_mu_);
    idle_cv_.wait(lock, [this] { return in_flight_ == 0; });
}

std::size_t SandboxManager::in_flight() const {
    std::lock_guard lock(idle_mu_);
    return in_flight_;
}

}  // namespace wrenn::agent
