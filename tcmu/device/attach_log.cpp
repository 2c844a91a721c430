#include "tcmu/device/attach_log.hpp"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "common/file.hpp"
#include "common/unique_fd.hpp"
#include "tcmu/configfs/config_file.hpp"
#include "tcmu/configfs/naming.hpp"

namespace wrenn::tcmu {

namespace {

void write_all(int fd, const std::string& file, const std::string& text) {
    std::size_t done = 0;
    while (done < text.size()) {
        ssize_t n = ::write(fd, text.data() + done, text.size() - done);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            spdlog::warn("tcmu: cannot write attach log to {}: {}", escape_for_log(file),
                         errno_error("write").message());
            return;
        }
        done += static_cast<std::size_t>(n);
    }
}

// For an API attach: see AttachLog::append_to_result_file.
void append_contained_result_file(const OriginPolicy& policy, const AttachRequest& req,
                                  const std::string& text) {
    auto config = open_allowed_config(policy, req.config_path);
    if (!config) {
        spdlog::warn("tcmu: no attach log for {}: {}", escape_for_log(req.config_path),
                     config.error().message());
        return;
    }
    std::optional<std::string> field;
    if (auto config_text = read_file(config->file.get(), req.config_path, 1U << 20); config_text) {
        if (auto parsed = result_file_field(*config_text); parsed) {
            field = std::move(parsed).value();
        }
    }
    const std::string name = contained_result_file(field);
    const std::string shown = req.config_path.substr(0, req.config_path.rfind('/') + 1) + name;
    UniqueFd fd(open_beneath(config->dir.get(), name,
                             O_WRONLY | O_APPEND | O_CREAT | O_NONBLOCK | O_NOCTTY, 0600));
    if (!fd) {
        spdlog::warn("tcmu: no attach log: {}",
                     beneath_error("open " + escape_for_log(shown), errno).message());
        return;
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1) {
        spdlog::warn("tcmu: no attach log: {} is not a regular file with a single link",
                     escape_for_log(shown));
        return;
    }
    write_all(fd.get(), shown, text);
}

}  // namespace

void AttachLog::add(std::string line) {
    spdlog::debug("tcmu: {}", line);
    lines_.push_back(std::move(line));
}

std::string AttachLog::text(const std::string& id) const {
    std::string out;
    for (const std::string& line : lines_) {
        out += "wrenn tcmu attach " + id + ": " + escape_for_log(line) + "\n";
    }
    return out;
}

void AttachLog::append_to_result_file(const AttachRequest& req) const {
    if (req.handler != "overlaybd") {
        return;  // only overlaybd configs name a result file
    }
    if (req.api_policy) {
        append_contained_result_file(*req.api_policy, req, text(req.id));
        return;
    }
    auto file = result_file_for_config(req.config_path);
    if (!file) {
        spdlog::debug("tcmu: no result file for {}: {}", escape_for_log(req.config_path),
                      file.error().message());
        return;
    }
    UniqueFd fd(::open(file->c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644));
    if (!fd) {
        spdlog::warn("tcmu: cannot write attach log to {}: {}", escape_for_log(*file),
                     errno_error("open").message());
        return;
    }
    write_all(fd.get(), *file, text(req.id));
}

}  // namespace wrenn::tcmu
