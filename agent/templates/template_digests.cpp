#include "agent/templates/template_digests.hpp"

#include <dirent.h>
#include <sched.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <set>

#include "agent/state/formats.hpp"
#include "agent/state/state_store.hpp"
#include "common/file.hpp"
#include "flatten/flatten.hpp"

namespace wrenn::agent {

namespace json = boost::json;

namespace {

// Versions kept per path: the image now and a few it replaced, which paused sandboxes may still
// record (their digests decide a resume after a rename over the image).
constexpr std::size_t kVersionsPerPath = 4;
// A group list is 1/16384 of its image; 64 MiB covers a 1 TiB template.
constexpr std::size_t kMaxListBytes = std::size_t{64} << 20;

// The background reader yields to everything else: the lowest best-effort I/O priority
// (ioprio_set(2); glibc has no wrapper) and the idle CPU scheduling class, both for the calling
// thread only. Reading a new template's digest may wait; a sandbox's request must not. A failure
// costs only that, so it is logged and ignored.
void yield_to_requests() {
    constexpr int kWhoProcess = 1;  // IOPRIO_WHO_PROCESS: with 0, the calling thread
    constexpr int kClassBestEffort = 2;
    constexpr int kClassShift = 13;
    constexpr int kLowest = 7;
    if (::syscall(SYS_ioprio_set, kWhoProcess, 0, (kClassBestEffort << kClassShift) | kLowest) !=
        0) {
        spdlog::warn("template digests: cannot lower the reader's I/O priority: {}",
                     std::strerror(errno));
    }
    const sched_param param{};
    if (::sched_setscheduler(0, SCHED_IDLE, &param) != 0) {
        spdlog::warn("template digests: cannot give the reader the idle CPU class: {}",
                     std::strerror(errno));
    }
}

json::object to_json(const std::string& path, const TemplateIdentity& t, const std::string& whole) {
    json::object o{{"path", path},           {"device", t.device},
                   {"inode", t.inode},       {"size_bytes", t.size_bytes},
                   {"mtime_ns", t.mtime_ns}, {"ctime_ns", t.ctime_ns}};
    if (!t.digest.empty()) {
        o["digest"] = t.digest;
    }
    if (!whole.empty()) {
        o["sha256"] = whole;
    }
    return o;
}

// One entry of either version of the file: version 1 had a bare 64-hex "sha256" of the whole
// image; version 2 has "digest" (blocks) and "sha256" ("sha256:<hex>"), each optional.
struct Loaded {
    std::string path;
    TemplateIdentity identity;
    std::string whole;
};
std::optional<Loaded> from_json(const json::value& v) {
    if (!v.is_object()) {
        return std::nullopt;
    }
    const auto& o = v.as_object();
    const auto* path = o.if_contains("path");
    const auto* mtime = o.if_contains("mtime_ns");
    const auto* ctime = o.if_contains("ctime_ns");
    const auto* device = o.if_contains("device");
    const auto* inode = o.if_contains("inode");
    const auto* size = o.if_contains("size_bytes");
    if (path == nullptr || !path->is_string() || mtime == nullptr || !mtime->is_int64() ||
        ctime == nullptr || !ctime->is_int64() || device == nullptr || !device->is_number() ||
        inode == nullptr || !inode->is_number() || size == nullptr || !size->is_number()) {
        return std::nullopt;
    }
    boost::system::error_code ec;
    Loaded out;
    out.path = std::string(path->as_string());
    out.identity.device = device->to_number<std::uint64_t>(ec);
    out.identity.inode = inode->to_number<std::uint64_t>(ec);
    out.identity.size_bytes = size->to_number<std::uint64_t>(ec);
    if (ec) {
        return std::nullopt;
    }
    out.identity.mtime_ns = mtime->as_int64();
    out.identity.ctime_ns = ctime->as_int64();
    for (const char* key : {"digest", "sha256"}) {
        const auto* d = o.if_contains(key);
        if (d == nullptr || !d->is_string()) {
            continue;
        }
        auto parsed = parse_digest(std::string_view(d->as_string()));
        if (!parsed) {
            continue;
        }
        std::string full = parsed->algorithm + ":" + parsed->hex;
        (parsed->algorithm == kBlocksAlgorithm ? out.identity.digest : out.whole) = std::move(full);
    }
    if (out.identity.digest.empty() && out.whole.empty()) {
        return std::nullopt;
    }
    return out;
}

// "blocks-sha256-4k:<hex>" -> "<hex>", the name of the version's files in template-blocks/.
std::string hex_of(const std::string& digest) {
    return digest.substr(digest.find(':') + 1);
}

bool same(const std::string& path_a, const TemplateIdentity& a, const std::string& path_b,
          const TemplateIdentity& b) {
    return path_a == path_b && a.same_file_state(b);
}

}  // namespace

TemplateDigests::TemplateDigests(std::string state_dir, Platform& platform)
    : index_file_(state_dir + "/" + kDigestIndexName),
      blocks_dir_(state_dir + "/template-blocks"),
      platform_(platform) {
    if (::mkdir(blocks_dir_.c_str(), 0700) != 0 && errno != EEXIST) {
        spdlog::warn("template digests: create {}: {}", blocks_dir_, std::strerror(errno));
    }
    // Leaf files a killed agent was building.
    if (DIR* dir = ::opendir(blocks_dir_.c_str()); dir != nullptr) {
        while (const dirent* e = ::readdir(dir)) {
            if (std::string_view(e->d_name).starts_with("building-")) {
                ::unlinkat(::dirfd(dir), e->d_name, 0);
            }
        }
        ::closedir(dir);
    }
    auto text = read_file(index_file_, 16U << 20);
    if (!text) {
        if (text.error().code() != ENOENT) {
            spdlog::warn("template digests: {}; every template is read again when next used",
                         text.error().message());
        }
        return;
    }
    boost::system::error_code ec;
    json::value doc = json::parse(*text, ec);
    const json::value* list =
        (!ec && doc.is_object()) ? doc.as_object().if_contains("templates") : nullptr;
    if (list == nullptr || !list->is_array()) {
        spdlog::warn("template digests: {} is not what this agent writes; starting empty",
                     index_file_);
        return;
    }
    for (const auto& item : list->as_array()) {
        if (auto entry = from_json(item)) {
            versions_.push_back(Version{entry->path, entry->identity, entry->whole});
        }
    }
}

TemplateDigests::~TemplateDigests() {
    stop();
}

void TemplateDigests::start(OnKnown on_known) {
    std::lock_guard lock(mu_);
    on_known_ = std::move(on_known);
    if (!reader_.joinable()) {
        stopping_ = false;
        reader_ = std::thread([this] { run(); });
    }
}

void TemplateDigests::stop() {
    {
        std::lock_guard lock(mu_);
        stopping_ = true;
        queue_.clear();
    }
    changed_.notify_all();
    if (reader_.joinable()) {
        reader_.join();
    }
}

TemplateDigests::Version* TemplateDigests::find_locked(const std::string& path,
                                                       const TemplateIdentity& version) {
    for (auto& v : versions_) {
        if (same(v.path, v.identity, path, version)) {
            return &v;
        }
    }
    return nullptr;
}

const TemplateDigests::Version* TemplateDigests::find_locked(
    const std::string& path, const TemplateIdentity& version) const {
    return const_cast<TemplateDigests*>(this)->find_locked(path, version);
}

bool TemplateDigests::reading_locked(const std::string& path,
                                     const TemplateIdentity& version) const {
    return std::any_of(reading_.begin(), reading_.end(),
                       [&](const Version& v) { return same(v.path, v.identity, path, version); });
}

std::optional<std::string> TemplateDigests::known(const std::string& path,
                                                  const TemplateIdentity& version) const {
    std::lock_guard lock(mu_);
    const Version* v = find_locked(path, version);
    if (v == nullptr || v->identity.digest.empty()) {
        return std::nullopt;
    }
    return v->identity.digest;
}

bool TemplateDigests::queued_locked(const std::string& path,
                                    const TemplateIdentity& version) const {
    return std::any_of(queue_.begin(), queue_.end(),
                       [&](const Version& q) { return same(q.path, q.identity, path, version); });
}

TemplateDigests::Version& TemplateDigests::entry_locked(const std::string& path,
                                                        const TemplateIdentity& version) {
    if (Version* v = find_locked(path, version)) {
        return *v;
    }
    TemplateIdentity bare = version;
    bare.digest.clear();
    return versions_.emplace_back(Version{path, bare, {}});
}

void TemplateDigests::request(const std::string& path, const TemplateIdentity& version) {
    {
        std::lock_guard lock(mu_);
        const Version* v = find_locked(path, version);
        if ((v != nullptr && !v->identity.digest.empty()) || reading_locked(path, version) ||
            queued_locked(path, version)) {
            return;
        }
        TemplateIdentity bare = version;
        bare.digest.clear();
        queue_.push_back(Version{path, bare, {}});
    }
    spdlog::info("template {}: digest pending, read in the background ({} bytes)", path,
                 version.size_bytes);
    changed_.notify_all();
}

std::string TemplateDigests::known_or_request(const std::string& path,
                                              const TemplateIdentity& version) {
    if (auto digest = known(path, version)) {
        return *digest;
    }
    request(path, version);
    return {};
}

Result<std::string> TemplateDigests::wait(const std::string& path,
                                          const TemplateIdentity& version) {
    {
        std::unique_lock lock(mu_);
        for (;;) {
            const Version* v = find_locked(path, version);
            if (v != nullptr && !v->identity.digest.empty()) {
                return v->identity.digest;
            }
            if (!reading_locked(path, version)) {
                break;
            }
            // Read by someone else: theirs counts if it succeeds; if it fails, read it here.
            changed_.wait(lock);
        }
        std::erase_if(queue_,
                      [&](const Version& q) { return same(q.path, q.identity, path, version); });
        TemplateIdentity bare = version;
        bare.digest.clear();
        reading_.push_back(Version{path, bare, {}});
    }
    return read_blocks(path, version, false);
}

Result<std::string> TemplateDigests::read_blocks(const std::string& path,
                                                 const TemplateIdentity& version, bool background) {
    const auto start = std::chrono::steady_clock::now();
    auto list = [&]() -> Result<BlockList> {
        auto image = platform_.open_template_version(path, version);
        if (!image) {
            return std::move(image).error();
        }
        auto leaves = flatten::PendingOutput::create(building_path(), 0600);
        if (!leaves) {
            return std::move(leaves).error();
        }
        // Only the background reader gives up when the agent stops: a caller that needs the
        // digest (an export in flight) finishes, as operations in flight do at SIGTERM.
        auto hashed = hash_blocks(path, *image, leaves->fd(), background ? &stopping_ : nullptr);
        if (hashed) {
            keep_leaves(*leaves, hashed->digest());
        }
        return hashed;
    }();
    if (!list) {
        {
            std::lock_guard lock(mu_);
            std::erase_if(reading_, [&](const Version& v) {
                return same(v.path, v.identity, path, version);
            });
        }
        changed_.notify_all();
        return std::move(list).error();
    }
    const std::string digest = list->digest();
    remember(path, version, *list, digest);
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    spdlog::info("template {}: digest {} ({} bytes in {:.2f} s)", path, digest, version.size_bytes,
                 took.count());
    return digest;
}

std::string TemplateDigests::building_path() {
    return blocks_dir_ + "/building-" + std::to_string(::getpid()) + "-" +
           std::to_string(++building_);
}

void TemplateDigests::keep_leaves(flatten::PendingOutput& leaves, const std::string& digest) {
    const std::string final_path = blocks_dir_ + "/" + hex_of(digest) + ".leaves";
    // Under its building name first, then named by its digest (a file of the same name holds
    // the same hashes). No fsync: like every file of this cache it is checked when read (each
    // page against the group list), and a damaged one only costs a read of the image.
    auto committed = leaves.commit(false);
    if (!committed) {
        spdlog::warn("template digests: {}", committed.error().message());
        return;
    }
    if (::rename(leaves.final_path().c_str(), final_path.c_str()) != 0) {
        spdlog::warn("template digests: rename {} to {}: {}", leaves.final_path(), final_path,
                     std::strerror(errno));
        ::unlink(leaves.final_path().c_str());
    }
}

void TemplateDigests::remember(const std::string& path, const TemplateIdentity& version,
                               const BlockList& list, const std::string& digest) {
    // The list first, so that an index entry names a list on disk. Without it the digest still
    // stands; only a flatten over this version reads its output in the background instead.
    if (auto written =
            write_file_atomically(blocks_dir_ + "/" + hex_of(digest), list.encode(), false);
        !written) {
        spdlog::warn("template digests: {}", written.error().message());
    }
    OnKnown notify;
    {
        std::lock_guard lock(mu_);
        std::erase_if(reading_,
                      [&](const Version& v) { return same(v.path, v.identity, path, version); });
        entry_locked(path, version).identity.digest = digest;
        save_locked();
        notify = on_known_;
    }
    changed_.notify_all();
    if (notify) {
        TemplateIdentity known = version;
        known.digest = digest;
        notify(path, known);
    }
}

Result<std::string> TemplateDigests::whole_sha256(const std::string& path,
                                                  const TemplateIdentity& version) {
    {
        std::lock_guard lock(mu_);
        if (const Version* v = find_locked(path, version); v != nullptr && !v->whole.empty()) {
            return v->whole;
        }
    }
    spdlog::info(
        "template {}: computing the sha256 of all {} bytes (an archive or record of an "
        "earlier agent names the template by it)",
        path, version.size_bytes);
    auto image = platform_.open_template_version(path, version);
    if (!image) {
        return std::move(image).error();
    }
    auto whole = hash_whole(path, *image);
    if (!whole) {
        return whole;
    }
    std::lock_guard lock(mu_);
    entry_locked(path, version).whole = *whole;
    save_locked();
    return whole;
}

Result<std::string> TemplateDigests::derive(const std::string& origin_path,
                                            const TemplateIdentity& origin,
                                            const std::string& out_path,
                                            const TemplateIdentity& out,
                                            std::span<const std::uint64_t> changed_leaves) {
    const std::string action = "derive the digest of " + out_path + " from " + origin_path;
    const auto start = std::chrono::steady_clock::now();
    auto origin_digest = known(origin_path, origin);
    if (!origin_digest) {
        return Error(action, ENOENT, "the origin's digest is not known yet");
    }
    const std::string hex = hex_of(*origin_digest);
    auto bytes = read_file(blocks_dir_ + "/" + hex, kMaxListBytes);
    if (!bytes) {
        return std::move(bytes).error().within(action);
    }
    auto list = BlockList::decode(*bytes);
    if (!list) {
        return std::move(list).error().within(action);
    }
    if (list->digest() != *origin_digest) {
        return Error(action, EINVAL, "the stored block list does not hash to " + *origin_digest);
    }
    auto image = platform_.open_template_version(out_path, out);
    if (!image) {
        return std::move(image).error().within(action);
    }
    // The new version's leaf file starts as a copy of the origin's (a reflink where the
    // filesystem can, else a copy of its data), and only the changed groups' pages change.
    using Ms = std::chrono::duration<double, std::milli>;
    auto mark = std::chrono::steady_clock::now();
    auto lap = [&mark] {
        const auto now = std::chrono::steady_clock::now();
        return Ms(now - std::exchange(mark, now)).count();
    };
    const double check = Ms(mark - start).count();
    auto leaves = flatten::copy_file(blocks_dir_ + "/" + hex + ".leaves", building_path(), {});
    if (!leaves) {
        return std::move(leaves).error().within(action);
    }
    const double copy = lap();
    auto updated =
        rehash_blocks(out_path, *image, std::move(*list), leaves->output.fd(), changed_leaves);
    if (!updated) {
        return std::move(updated).error();
    }
    const double hash = lap();
    const std::string digest = updated->digest();
    keep_leaves(leaves->output, digest);
    remember(out_path, out, *updated, digest);
    const double keep = lap();
    spdlog::info(
        "template {}: digest {} derived from {}'s, {} changed leaves hashed (list {:.1f} "
        "ms, leaf file copy {:.1f} ms, hashing {:.1f} ms, keeping {:.1f} ms)",
        out_path, digest, origin_path, changed_leaves.size(), check, copy, hash, keep);
    return digest;
}

Result<flatten::PendingOutput> TemplateDigests::new_leaf_file() {
    return flatten::PendingOutput::create(building_path(), 0600);
}

void TemplateDigests::adopt(const std::string& path, const TemplateIdentity& version,
                            const BlockList& list, flatten::PendingOutput& leaves) {
    const std::string digest = list.digest();
    keep_leaves(leaves, digest);
    remember(path, version, list, digest);
}

void TemplateDigests::forget(const std::string& path) {
    std::lock_guard lock(mu_);
    std::set<std::string> dropped;
    for (const auto& v : versions_) {
        if (v.path == path && !v.identity.digest.empty()) {
            dropped.insert(hex_of(v.identity.digest));
        }
    }
    std::erase_if(versions_, [&](const Version& v) { return v.path == path; });
    std::erase_if(queue_, [&](const Version& v) { return v.path == path; });
    for (const auto& v : versions_) {
        if (!v.identity.digest.empty()) {
            dropped.erase(hex_of(v.identity.digest));  // another path has the same content
        }
    }
    for (const auto& hex : dropped) {
        ::unlink((blocks_dir_ + "/" + hex).c_str());
        ::unlink((blocks_dir_ + "/" + hex + ".leaves").c_str());
    }
    save_locked();
}

void TemplateDigests::save_locked() {
    // Keep the newest kVersionsPerPath versions of each path.
    std::map<std::string, std::size_t> seen;
    std::vector<Version> kept;
    for (auto it = versions_.rbegin(); it != versions_.rend(); ++it) {
        if (++seen[it->path] <= kVersionsPerPath) {
            kept.push_back(*it);
        }
    }
    std::reverse(kept.begin(), kept.end());
    std::set<std::string> lists;
    for (const auto& v : kept) {
        if (!v.identity.digest.empty()) {
            lists.insert(hex_of(v.identity.digest));
        }
    }
    for (const auto& v : versions_) {
        if (v.identity.digest.empty()) {
            continue;
        }
        const std::string hex = hex_of(v.identity.digest);
        if (lists.count(hex) == 0) {
            ::unlink((blocks_dir_ + "/" + hex).c_str());
            ::unlink((blocks_dir_ + "/" + hex + ".leaves").c_str());
            lists.insert(hex);  // once
        }
    }
    versions_ = std::move(kept);
    json::array list;
    for (const auto& v : versions_) {
        list.push_back(to_json(v.path, v.identity, v.whole));
    }
    const std::string text = json::serialize(json::object{{"version", kDigestIndexFormat},
                                                          {"templates", std::move(list)}}) +
                             "\n";
    // A cache: not fsynced (a crash leaves the old index or an unreadable one, which starts
    // empty and costs a read of each image).
    if (auto written = write_file_atomically(index_file_, text, false); !written) {
        // Only a cache: the next use reads the image again.
        spdlog::warn("template digests: {}", written.error().message());
    }
}

void TemplateDigests::run() {
    yield_to_requests();
    for (;;) {
        Version next;
        {
            std::unique_lock lock(mu_);
            changed_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
            if (stopping_) {
                return;
            }
            next = std::move(queue_.front());
            queue_.pop_front();
            const Version* v = find_locked(next.path, next.identity);
            if ((v != nullptr && !v->identity.digest.empty()) ||
                reading_locked(next.path, next.identity)) {
                continue;
            }
            reading_.push_back(next);
        }
        auto digest = read_blocks(next.path, next.identity, true);
        if (!digest) {
            if (digest.error().code() == ECANCELED) {
                return;
            }
            spdlog::warn("template {}: digest not recorded: {}", next.path,
                         digest.error().message());
        }
    }
}

}  // namespace wrenn::agent
