#include "agent/template_digests.hpp"

#include <spdlog/spdlog.h>

#include <boost/json.hpp>
#include <cerrno>

#include "agent/state_store.hpp"
#include "common/file.hpp"

namespace wrenn::agent {

namespace json = boost::json;

namespace {

json::object to_json(const std::string& path, const TemplateIdentity& t) {
    return json::object{{"path", path},           {"device", t.device},
                        {"inode", t.inode},       {"size_bytes", t.size_bytes},
                        {"mtime_ns", t.mtime_ns}, {"ctime_ns", t.ctime_ns},
                        {"sha256", t.sha256}};
}

std::optional<std::pair<std::string, TemplateIdentity>> from_json(const json::value& v) {
    if (!v.is_object()) {
        return std::nullopt;
    }
    const auto& o = v.as_object();
    const auto* path = o.if_contains("path");
    const auto* sha = o.if_contains("sha256");
    const auto* mtime = o.if_contains("mtime_ns");
    const auto* ctime = o.if_contains("ctime_ns");
    const auto* device = o.if_contains("device");
    const auto* inode = o.if_contains("inode");
    const auto* size = o.if_contains("size_bytes");
    if (path == nullptr || !path->is_string() || sha == nullptr || !sha->is_string() ||
        sha->as_string().size() != 64 || mtime == nullptr || !mtime->is_int64() ||
        ctime == nullptr || !ctime->is_int64() || device == nullptr || !device->is_number() ||
        inode == nullptr || !inode->is_number() || size == nullptr || !size->is_number()) {
        return std::nullopt;
    }
    boost::system::error_code ec;
    TemplateIdentity t;
    t.device = device->to_number<std::uint64_t>(ec);
    t.inode = inode->to_number<std::uint64_t>(ec);
    t.size_bytes = size->to_number<std::uint64_t>(ec);
    if (ec) {
        return std::nullopt;
    }
    t.mtime_ns = mtime->as_int64();
    t.ctime_ns = ctime->as_int64();
    t.sha256 = std::string(sha->as_string());
    return std::make_pair(std::string(path->as_string()), t);
}

}  // namespace

TemplateDigests::TemplateDigests(std::string file, Hasher hasher)
    : file_(std::move(file)), hasher_(std::move(hasher)) {
    auto text = read_file(file_, 16U << 20);
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
        spdlog::warn("template digests: {} is not what this agent writes; starting empty", file_);
        return;
    }
    for (const auto& item : list->as_array()) {
        if (auto entry = from_json(item)) {
            known_[entry->first] = entry->second;
        }
    }
}

std::optional<std::string> TemplateDigests::cached(const std::string& path,
                                                   const TemplateIdentity& identity) const {
    std::lock_guard lock(mu_);
    auto it = known_.find(path);
    if (it != known_.end() && it->second.same_file_state(identity)) {
        return it->second.sha256;
    }
    return std::nullopt;
}

Result<TemplateIdentity> TemplateDigests::digest(const std::string& path,
                                                 TemplateIdentity identity) {
    std::shared_future<Result<std::string>> pending;
    std::promise<Result<std::string>> mine;
    bool reader = false;
    {
        std::lock_guard lock(mu_);
        auto it = known_.find(path);
        if (it != known_.end() && it->second.same_file_state(identity)) {
            identity.sha256 = it->second.sha256;
            return identity;
        }
        auto in_flight = reading_.find(path);
        if (in_flight != reading_.end()) {
            pending = in_flight->second;
        } else {
            pending = mine.get_future().share();
            reading_.emplace(path, pending);
            reader = true;
        }
    }
    if (!reader) {
        // Another caller is reading this image: its answer counts only if it read the same state.
        pending.wait();
        if (auto known = cached(path, identity)) {
            identity.sha256 = *known;
            return identity;
        }
        return digest(path, std::move(identity));
    }
    spdlog::info("template {}: computing sha256 of {} bytes (once per version of the image)", path,
                 identity.size_bytes);
    auto sha = hasher_(path, identity);
    {
        std::lock_guard lock(mu_);
        reading_.erase(path);
        if (sha) {
            identity.sha256 = *sha;
            known_[path] = identity;
            save_locked();
        }
    }
    mine.set_value(sha ? Result<std::string>(*sha) : Result<std::string>(sha.error()));
    if (!sha) {
        return std::move(sha).error();
    }
    spdlog::info("template {}: sha256 {}", path, identity.sha256);
    return identity;
}

void TemplateDigests::save_locked() const {
    json::array list;
    for (const auto& [path, identity] : known_) {
        list.push_back(to_json(path, identity));
    }
    const std::string text =
        json::serialize(json::object{{"version", 1}, {"templates", std::move(list)}}) + "\n";
    if (auto written = write_file_atomically(file_, text); !written) {
        // Only a cache: the next use reads the image again.
        spdlog::warn("template digests: {}", written.error().message());
    }
}

}  // namespace wrenn::agent
