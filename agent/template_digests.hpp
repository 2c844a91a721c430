#pragma once

#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <string>

#include "agent/sandbox.hpp"
#include "common/result.hpp"

namespace wrenn::agent {

// The SHA-256 of each template image, computed once per identity (device, inode, size, mtime,
// ctime) and kept in one JSON file in the state dir, so that neither a create nor a restart
// rereads an unchanged image. Thread-safe; concurrent asks for the same image read it once.
class TemplateDigests {
  public:
    // Reads the image and returns its digest; the check that it is still `identity` is its job.
    using Hasher =
        std::function<Result<std::string>(const std::string& path, const TemplateIdentity&)>;

    // `file` need not exist; one that cannot be read is logged and starts the cache empty.
    TemplateDigests(std::string file, Hasher hasher);

    // `identity` with its sha256 filled in: from the cache when the image is known in exactly
    // this state, else read now and remembered (the file is rewritten atomically).
    Result<TemplateIdentity> digest(const std::string& path, TemplateIdentity identity);
    // The digest known for the image in exactly this state, without reading it.
    std::optional<std::string> cached(const std::string& path,
                                      const TemplateIdentity& identity) const;

  private:
    void save_locked() const;

    std::string file_;
    Hasher hasher_;
    mutable std::mutex mu_;
    std::map<std::string, TemplateIdentity> known_;  // by path: the latest state hashed
    std::map<std::string, std::shared_future<Result<std::string>>> reading_;  // by path
};

}  // namespace wrenn::agent
