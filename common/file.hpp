#pragma once

#include <cstddef>
#include <string>

#include "common/result.hpp"

namespace wrenn {

// The whole of a small file (a record, a config, a sysfs or configfs attribute), read with
// O_CLOEXEC and retried on EINTR. A file longer than `limit` bytes is an EFBIG error: nothing
// this project reads whole is ever that large, so a huge one is a mistake, not data.
Result<std::string> read_file(const std::string& path, std::size_t limit);
// The same from a descriptor the caller opened (and checked); `what` names it in errors.
Result<std::string> read_file(int fd, const std::string& what, std::size_t limit);

}  // namespace wrenn
