#pragma once

#include <sys/types.h>

#include <optional>
#include <string>

#include "common/result.hpp"
#include "common/unique_fd.hpp"

namespace wrenn::http {

// The directory a unix socket file is made in, opened without following a symlink and checked
// (a directory, owned by root or this user, not writable by others unless sticky), and the
// socket's name in it. Everything after the check goes through `dir`, so swapping the path
// for a symlink afterwards changes nothing.
struct SocketDir {
    UniqueFd dir;
    std::string dir_path;
    std::string name;
    // The socket's group when the requested group exists (the socket is then 0660, else 0600).
    std::optional<gid_t> group;

    // A path that reaches the socket through the opened directory ("/proc/self/fd/N/name"),
    // for bind() and connect(), which take only paths; the plain path when /proc is not there
    // or the result would not fit in sun_path.
    [[nodiscard]] std::string bind_path() const;
    [[nodiscard]] std::string path() const { return dir_path + "/" + name; }
    // 0660 with a group, else 0600.
    [[nodiscard]] mode_t socket_mode() const { return group ? 0660 : 0600; }
};

// Opens (creating it 0750, one level only, with `group_name` as its group when that group
// exists) the directory of the absolute socket path. Refuses a symlink, a non-directory, a
// directory owned by another user, or one that others may write into without the sticky bit:
// the socket file in it could be swapped under us. Errors read as
// "socket directory /run/wrenn: is a symbolic link; refusing to follow it".
Result<SocketDir> open_socket_dir(const std::string& socket_path, const std::string& group_name);

// The id of a group by name, through getgrnam_r; nullopt when there is no such group.
std::optional<gid_t> find_group(const std::string& name);

}  // namespace wrenn::http
