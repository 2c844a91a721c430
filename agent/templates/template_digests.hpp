#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "agent/platform/platform.hpp"
#include "agent/state/sandbox.hpp"
#include "agent/state/template_blocks.hpp"
#include "common/result.hpp"
#include "flatten/image_copy.hpp"

namespace wrenn::agent {

// The digest of each template version (device, inode, size, mtime, ctime), computed once and
// kept in the state dir: `template-digests.json` names each version's digest, and
// `template-blocks/<hex>` holds its block list (template_blocks.hpp), which a flatten updates
// in O(changed) instead of reading the new image. Requests never wait on a read here: a version
// never seen is queued and read in the background, one image at a time, at the lowest
// best-effort I/O priority; whoever needs the bytes themselves (export, import) waits, or reads
// it at once. A digest is only ever attributed to the version it was read from: the read
// fails with ESTALE, and is dropped, when the image changed meanwhile. Thread-safe.
class TemplateDigests {
  public:
    // Called on the thread that read it, once a version's digest is known.
    using OnKnown = std::function<void(const std::string& path, const TemplateIdentity& version)>;

    // Reads `<state_dir>/template-digests.json` (a missing or unreadable one starts empty, and
    // one written by an earlier agent keeps its whole-image digests); nothing is read in the
    // background until start().
    TemplateDigests(std::string state_dir, Platform& platform);
    ~TemplateDigests();
    TemplateDigests(const TemplateDigests&) = delete;
    TemplateDigests& operator=(const TemplateDigests&) = delete;

    // Starts the background reader; on_known is called for each version it finishes.
    void start(OnKnown on_known);
    // Stops it: a read in progress is abandoned, the queue dropped. Idempotent.
    void stop();

    // The version's "blocks-sha256-4k:" digest if known, without reading anything.
    [[nodiscard]] std::optional<std::string> known(const std::string& path,
                                                   const TemplateIdentity& version) const;
    // Queues the version for the background reader unless it is known or queued.
    void request(const std::string& path, const TemplateIdentity& version);
    // known(), or empty after request(): what a request shows without waiting.
    std::string known_or_request(const std::string& path, const TemplateIdentity& version);
    // The digest, read now if nobody has (a background read of it in progress is waited for).
    Result<std::string> wait(const std::string& path, const TemplateIdentity& version);
    // "sha256:<hex>" of the whole image (version 1 archives, records of earlier agents): from
    // the cache, or read now.
    Result<std::string> whole_sha256(const std::string& path, const TemplateIdentity& version);
    // A flatten's output: `out`'s digest from the origin's stored lists, with only the leaves
    // `changed_leaves` (sorted) read from `out`. ENOENT when the origin's digest or lists are not
    // known (the caller then request()s `out`).
    Result<std::string> derive(const std::string& origin_path, const TemplateIdentity& origin,
                               const std::string& out_path, const TemplateIdentity& out,
                               std::span<const std::uint64_t> changed_leaves);

    // An upload's leaf file: a new, empty file in the state dir for its leaf pages
    // (BlockHasher), removed unless adopt() keeps it.
    Result<flatten::PendingOutput> new_leaf_file();
    // A version whose list was computed as it was written (an upload): remembered as if read,
    // with `leaves` (from new_leaf_file) as its leaf file.
    void adopt(const std::string& path, const TemplateIdentity& version, const BlockList& list,
               flatten::PendingOutput& leaves);
    // Every version of `path` forgotten, and the lists no other version uses removed (a
    // deleted template).
    void forget(const std::string& path);

  private:
    struct Version {
        std::string path;
        TemplateIdentity identity;  // digest: the blocks digest, empty while unknown
        std::string whole;          // "sha256:<hex>", empty while unknown
    };
    Version* find_locked(const std::string& path, const TemplateIdentity& version);
    const Version* find_locked(const std::string& path, const TemplateIdentity& version) const;
    // The version's entry, made (without digests) when there is none.
    Version& entry_locked(const std::string& path, const TemplateIdentity& version);
    bool reading_locked(const std::string& path, const TemplateIdentity& version) const;
    bool queued_locked(const std::string& path, const TemplateIdentity& version) const;
    // Reads the block list of the version (the caller marked it as being read); the background
    // reader's read stops when the agent does.
    Result<std::string> read_blocks(const std::string& path, const TemplateIdentity& version,
                                    bool background);
    // Remembers a version's list under its digest (file first, then the index), wakes its
    // waiters and calls on_known.
    void remember(const std::string& path, const TemplateIdentity& version, const BlockList& list,
                  const std::string& digest);
    void save_locked();
    // A new name for a leaf file being built: building-<pid>-<n> (a start removes leftovers).
    std::string building_path();
    // Commits a built leaf file and names it <hex>.leaves after its list's digest.
    void keep_leaves(flatten::PendingOutput& leaves, const std::string& digest);
    void run();

    std::string index_file_;
    std::string blocks_dir_;
    Platform& platform_;
    OnKnown on_known_;

    mutable std::mutex mu_;
    std::condition_variable changed_;
    std::vector<Version> versions_;  // oldest first
    std::deque<Version> queue_;
    std::vector<Version> reading_;
    std::atomic<bool> stopping_{false};
    std::atomic<std::uint64_t> building_{0};
    std::thread reader_;
};

}  // namespace wrenn::agent
