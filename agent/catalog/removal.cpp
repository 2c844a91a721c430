// Delete: DELETE /templates/{name}, never while a sandbox is made over it.
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "agent/catalog/catalog.hpp"
#include "common/unique_fd.hpp"

namespace wrenn::agent {

Result<Done, Failure> delete_template(OperationContext& ctx, const std::string& name) {
    const std::string what = "delete template " + name;
    if (auto bad = check_name(name, "template", what)) {
        return *bad;
    }
    // Held alone: no create or import over it may start until it is gone.
    auto hold = own_template(ctx, name, "deleted", what);
    if (!hold) {
        return hold.error();
    }
    auto info = template_info(ctx, name);
    if (!info) {
        return info.error();
    }
    if (!info->users.empty()) {
        std::string ids;
        for (const auto& user : info->users) {
            ids += (ids.empty() ? "" : ", ") + user.id + " (" + std::string(to_string(user.state)) +
                   ")";
        }
        return failure(FailureKind::TemplateInUse, what, EBUSY,
                       std::to_string(info->users.size()) +
                           " sandbox(es) are made over it: " + ids + "; destroy them first");
    }
    // A loop of it that nothing holds (left by an agent killed before letting go) would keep
    // its blocks allocated.
    auto released = ctx.platform.release_loops_of(info->path);
    if (!released) {
        spdlog::warn("template {}: release its loops: {}", info->path, released.error().message());
    }
    if (::unlink(info->path.c_str()) != 0) {
        const int code = errno;
        return failure(code == ENOENT ? FailureKind::TemplateNotFound : FailureKind::Internal, what,
                       code, "unlink " + info->path);
    }
    // The name stays gone after a crash.
    if (UniqueFd dir(::open(ctx.options.templates_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        !dir || ::fsync(dir.get()) != 0) {
        spdlog::warn("template {}: fsync {}: {}", info->path, ctx.options.templates_dir,
                     std::strerror(errno));
    }
    ctx.digests.forget(info->path);
    spdlog::info("template {}: deleted (digest {}{})", info->path,
                 info->digest.empty() ? std::string("pending") : info->digest,
                 released && *released > 0 ? ", " + std::to_string(*released) + " loop(s) released"
                                           : std::string());
    return Done{};
}

}  // namespace wrenn::agent
