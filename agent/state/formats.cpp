#include "agent/state/formats.hpp"

#include <dirent.h>

#include <boost/json/parse.hpp>
#include <string_view>

#include "common/file.hpp"

namespace wrenn::agent {

namespace json = boost::json;

namespace {

// Records are a few hundred bytes, the index one line per template version.
constexpr std::size_t kMaxRecordBytes = 1U << 20;
constexpr std::size_t kMaxIndexBytes = 16U << 20;

// The file's version when it is newer than `newest`; nothing otherwise, or when it cannot be
// read or parsed.
Result<void> check_file(const std::string& path, std::size_t max_bytes, int newest) {
    auto text = read_file(path, max_bytes);
    if (!text) {
        return {};
    }
    boost::system::error_code ec;
    const json::value doc = json::parse(*text, ec);
    if (ec) {
        return {};
    }
    if (const int found = format_version(doc); found > newest) {
        return newer_format(path, found, newest);
    }
    return {};
}

}  // namespace

int format_version(const json::value& document) {
    const auto* object = document.if_object();
    const auto* version = object != nullptr ? object->if_contains("version") : nullptr;
    if (version == nullptr) {
        return 1;
    }
    if (version->is_int64() && version->as_int64() > 0 && version->as_int64() <= 1'000'000) {
        return static_cast<int>(version->as_int64());
    }
    if (version->is_uint64() && version->as_uint64() <= 1'000'000) {
        return static_cast<int>(version->as_uint64());
    }
    return 0;
}

Error newer_format(const std::string& file, int found, int newest) {
    return Error("read " + file, ENOTSUP,
                 "format version " + std::to_string(found) + ", newer than the " +
                     std::to_string(newest) +
                     " this agent reads: a newer wrenn-agent wrote it. Run that version (or a "
                     "newer one) on this state dir; nothing was changed");
}

Result<void> check_state_formats(const std::string& state_dir) {
    if (auto index =
            check_file(state_dir + "/" + kDigestIndexName, kMaxIndexBytes, kDigestIndexFormat);
        !index) {
        return index;
    }
    const std::string sandboxes = state_dir + "/sandboxes";
    DIR* dir = ::opendir(sandboxes.c_str());
    if (dir == nullptr) {
        return {};  // no sandbox yet (or unreadable: opening the store says so)
    }
    Result<void> result;
    while (const dirent* entry = ::readdir(dir)) {
        const std::string_view name = entry->d_name;
        if (name == "." || name == "..") {
            continue;
        }
        result = check_file(sandboxes + "/" + std::string(name) + "/" + kRecordName,
                            kMaxRecordBytes, kRecordFormat);
        if (!result) {
            break;
        }
    }
    ::closedir(dir);
    return result;
}

}  // namespace wrenn::agent
