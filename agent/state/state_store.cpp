#include "agent/state/state_store.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <cerrno>
#include <cstdio>
#include <fstream>
#include <initializer_list>
#include <sstream>
#include <string_view>
#include <vector>

#include "agent/state/formats.hpp"
#include "common/file.hpp"
#include "common/unique_fd.hpp"
#include "flatten/image_copy.hpp"

namespace wrenn::agent {

namespace {

constexpr const char* kCowName = "rootfs.cow";
// A running sandbox's export reads a point-in-time copy of its CoW, made under this name's
// temporary name (PendingOutput) and never committed.
constexpr const char* kExportCopyName = "export.cow";

Result<void> mkdir_p(const std::string& path, mode_t mode) {
    std::string partial;
    std::size_t pos = 0;
    while (pos != std::string::npos) {
        pos = path.find('/', pos + 1);
        partial = path.substr(0, pos);
        if (partial.empty()) {
            continue;
        }
        if (::mkdir(partial.c_str(), mode) != 0 && errno != EEXIST) {
            return errno_error("create folder " + partial);
        }
    }
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
        return errno_error("create folder " + path);
    }
    if (!S_ISDIR(st.st_mode)) {
        return Error("create folder " + path, ENOTDIR);
    }
    return success();
}

// Opens `path` with `flags` (O_RDONLY|O_CLOEXEC added) and fsyncs it; `what` names it in errors.
Result<void> fsync_path(const std::string& path, int flags, const std::string& what) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | flags));
    if (!fd) {
        return errno_error("open " + what);
    }
    if (::fsync(fd.get()) != 0) {
        return errno_error("fsync " + what);
    }
    return success();
}

Result<void> fsync_dir(const std::string& dir) {
    return fsync_path(dir, O_DIRECTORY, "folder " + dir);
}

std::string parent_of(const std::string& path) {
    auto slash = path.rfind('/');
    return slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
}

// Removes the files in dir named as a PendingOutput of one of `finals` names them while it is
// unfinished (what a copy killed half-way leaves); how many. A folder that is gone has none.
Result<std::size_t> remove_pending_copies(const std::string& dir,
                                          std::initializer_list<std::string_view> finals) {
    DIR* listing = ::opendir(dir.c_str());
    if (listing == nullptr) {
        return errno == ENOENT ? Result<std::size_t>(std::size_t{0})
                               : Result<std::size_t>(errno_error("list " + dir));
    }
    std::vector<std::string> temps;
    while (const dirent* entry = ::readdir(listing)) {
        for (const std::string_view final_name : finals) {
            if (flatten::is_pending_output_name(entry->d_name, final_name)) {
                temps.emplace_back(entry->d_name);
                break;
            }
        }
    }
    ::closedir(listing);
    for (const auto& name : temps) {
        const std::string path = dir + "/" + name;
        if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
            return errno_error("remove " + path);
        }
    }
    return temps.size();
}

}  // namespace

Result<void> write_file_atomically(const std::string& path, std::string_view data, bool durable) {
    const std::string tmp = path + ".tmp";
    UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!fd) {
        return errno_error("write " + tmp);
    }
    std::size_t done = 0;
    while (done < data.size()) {
        ssize_t n = ::write(fd.get(), data.data() + done, data.size() - done);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            Error err = errno_error("write " + tmp);
            ::unlink(tmp.c_str());
            return err;
        }
        done += static_cast<std::size_t>(n);
    }
    if (durable && ::fsync(fd.get()) != 0) {
        Error err = errno_error("fsync " + tmp);
        ::unlink(tmp.c_str());
        return err;
    }
    fd.reset();
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
        Error err = errno_error("rename " + tmp + " to " + path);
        ::unlink(tmp.c_str());
        return err;
    }
    return durable ? fsync_dir(parent_of(path)) : success();
}

Result<StateStore> StateStore::open(std::string state_dir) {
    while (state_dir.size() > 1 && state_dir.back() == '/') {
        state_dir.pop_back();
    }
    if (state_dir.empty() || state_dir[0] != '/') {
        return Error("open state dir '" + state_dir + "'", EINVAL, "give an absolute path");
    }
    StateStore store(std::move(state_dir));
    if (auto made = mkdir_p(store.sandboxes_dir(), 0700); !made) {
        return std::move(made).error().within("open state dir " + store.state_dir_);
    }
    return store;
}

Result<void> StateStore::sync_file(const std::string& path) const {
    return fsync_path(path, O_NOFOLLOW, path);
}

std::string StateStore::sandboxes_dir() const {
    return state_dir_ + "/sandboxes";
}
std::string StateStore::sandbox_dir(std::string_view id) const {
    return sandboxes_dir() + "/" + std::string(id);
}
std::string StateStore::record_path(std::string_view id) const {
    return sandbox_dir(id) + "/" + kRecordName;
}
std::string StateStore::cow_path(std::string_view id) const {
    return sandbox_dir(id) + "/" + kCowName;
}
std::string StateStore::export_copy_path(std::string_view id) const {
    return sandbox_dir(id) + "/" + kExportCopyName;
}

Result<void> StateStore::create_sandbox_files(std::string_view id, std::uint64_t cow_size) const {
    const std::string dir = sandbox_dir(id);
    if (::mkdir(dir.c_str(), 0700) != 0) {
        return errno_error("create folder " + dir);
    }
    const std::string cow = cow_path(id);
    UniqueFd fd(::open(cow.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (!fd) {
        Error err = errno_error("create CoW file " + cow);
        ::rmdir(dir.c_str());
        return err;
    }
    // ftruncate makes a sparse file: the CoW costs disk only for chunks the sandbox writes.
    if (::ftruncate(fd.get(), static_cast<off_t>(cow_size)) != 0 || ::fsync(fd.get()) != 0) {
        Error err = errno_error("size CoW file " + cow);
        ::unlink(cow.c_str());
        ::rmdir(dir.c_str());
        return err;
    }
    return fsync_dir(sandboxes_dir());
}

Result<void> StateStore::create_sandbox_dir(std::string_view id) const {
    const std::string dir = sandbox_dir(id);
    if (::mkdir(dir.c_str(), 0700) != 0) {
        return errno_error("create folder " + dir);
    }
    return fsync_dir(sandboxes_dir());
}

Result<void> StateStore::write_record(const Sandbox& sandbox) const {
    const std::string text = boost::json::serialize(record_to_json(sandbox)) + "\n";
    return write_file_atomically(record_path(sandbox.id), text);
}

Result<void> StateStore::remove_sandbox(std::string_view id) const {
    const std::string dir = sandbox_dir(id);
    for (const std::string& path : {record_path(id), record_path(id) + ".tmp"}) {
        if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
            return errno_error("remove " + path);
        }
    }
    if (auto synced = fsync_dir(dir); !synced && synced.error().code() != ENOENT) {
        return synced;
    }
    const std::string cow = cow_path(id);
    if (::unlink(cow.c_str()) != 0 && errno != ENOENT) {
        return errno_error("remove " + cow);
    }
    // A fork, import or export killed mid-copy leaves its CoW under a temporary name
    // (rootfs.cow.tmp- or export.cow.tmp- and six letters, flatten's PendingOutput): part of
    // this sandbox, so it goes with it.
    if (auto removed = remove_pending_copies(dir, {kCowName, kExportCopyName}); !removed) {
        return std::move(removed).error();
    }
    if (::rmdir(dir.c_str()) != 0 && errno != ENOENT) {
        return errno_error("remove folder " + dir);
    }
    return fsync_dir(sandboxes_dir());
}

Result<std::size_t> StateStore::remove_export_copies(std::string_view id) const {
    return remove_pending_copies(sandbox_dir(id), {kExportCopyName});
}

std::uint64_t StateStore::allocated_bytes(const std::string& path) const {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
        return 0;
    }
    return static_cast<std::uint64_t>(st.st_blocks) * 512;
}

Result<StateStore::Loaded> StateStore::load() const {
    Loaded loaded;
    DIR* dir = ::opendir(sandboxes_dir().c_str());
    if (dir == nullptr) {
        return errno_error("list " + sandboxes_dir());
    }
    std::vector<std::string> names;
    while (const dirent* entry = ::readdir(dir)) {
        std::string name = entry->d_name;
        if (name != "." && name != "..") {
            names.push_back(std::move(name));
        }
    }
    ::closedir(dir);
    for (const auto& name : names) {
        const std::string record = record_path(name);
        auto text = read_file(record, 1U << 20);  // a record is a few hundred bytes
        if (!text) {
            // No record (the open says so; no separate look first: a startup reads a thousand):
            // a create that never finished. Any other failure is no proof of that.
            const int code = text.error().code();
            if (code == ENOENT || code == ENOTDIR) {
                loaded.unfinished.push_back(name);
            } else {
                loaded.unreadable.emplace_back(name, std::move(text).error());
            }
            continue;
        }
        boost::system::error_code ec;
        auto value = boost::json::parse(*text, ec);
        if (ec) {
            loaded.unreadable.emplace_back(name, Error("parse " + record, 0, ec.message()));
            continue;
        }
        auto sandbox = record_from_json(value);
        if (!sandbox) {
            loaded.unreadable.emplace_back(name, std::move(sandbox).error().within(record));
            continue;
        }
        if (sandbox->id != name) {
            loaded.unreadable.emplace_back(
                name, Error("read " + record, 0,
                            "its id '" + sandbox->id + "' is not its folder's name"));
            continue;
        }
        loaded.sandboxes.push_back(std::move(*sandbox));
    }
    return loaded;
}

bool StateStore::same_filesystem(const std::string& dir) const {
    struct stat ours {};
    struct stat theirs {};
    return ::stat(state_dir_.c_str(), &ours) == 0 && ::stat(dir.c_str(), &theirs) == 0 &&
           ours.st_dev == theirs.st_dev;
}

}  // namespace wrenn::agent
