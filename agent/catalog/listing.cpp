// What GET /templates shows, which image has a digest, and holds on template names.
#include <dirent.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <map>

#include "agent/catalog/catalog.hpp"

namespace wrenn::agent {

Result<std::vector<std::string>> template_names(const OperationContext& ctx) {
    std::vector<std::string> names;
    const std::string& dir_path = ctx.options.templates_dir;
    DIR* dir = ::opendir(dir_path.c_str());
    if (dir == nullptr) {
        if (errno == ENOENT) {
            return names;
        }
        return errno_error("list templates in " + dir_path);
    }
    while (const dirent* e = ::readdir(dir)) {
        const std::string_view file = e->d_name;
        if (file.size() > 4 && file.ends_with(".img") &&
            is_valid_name(file.substr(0, file.size() - 4))) {
            names.emplace_back(file.substr(0, file.size() - 4));
        }
    }
    ::closedir(dir);
    std::sort(names.begin(), names.end());
    return names;
}

Result<std::vector<TemplateInfo>, Failure> list_templates(OperationContext& ctx) {
    std::map<std::string, std::size_t> users;
    for (const auto& sb : ctx.table.list()) {
        if (!sb.template_name.empty()) {
            ++users[sb.template_name];
        }
    }
    auto names = template_names(ctx);
    if (!names) {
        return internal(std::move(names).error());
    }
    std::vector<TemplateInfo> out;
    for (const auto& name : *names) {
        TemplateInfo info;
        info.name = name;
        info.path = ctx.template_path(name);
        info.sandboxes = users[name];
        auto identity = ctx.platform.inspect_template(info.path);
        if (!identity) {
            if (identity.error().code() == ENOENT) {
                continue;  // removed while we looked
            }
            info.problem = identity.error().message();
        } else {
            info.size_bytes = identity->size_bytes;
            // Never read here: a version not yet known shows as pending.
            info.digest = ctx.digests.known_or_request(info.path, *identity);
        }
        out.push_back(std::move(info));
    }
    return out;
}

namespace {

// The sandboxes made over the image at `path`, running and paused (not those being made).
std::vector<TemplateUser> users_of(const OperationContext& ctx, const std::string& path) {
    std::vector<TemplateUser> users;
    for (const auto& sb : ctx.table.list()) {
        if (sb.origin.type == OriginSpec::Type::Loop && sb.origin.path == path) {
            users.push_back(TemplateUser{sb.id, sb.state});
        }
    }
    std::sort(users.begin(), users.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
    return users;
}

}  // namespace

Result<TemplateInfo, Failure> template_info(OperationContext& ctx, const std::string& name) {
    const std::string what = "template " + name;
    if (auto bad = check_name(name, "template", what)) {
        return *bad;
    }
    TemplateInfo info;
    info.name = name;
    info.path = ctx.template_path(name);
    auto identity = ctx.platform.inspect_template(info.path);
    if (!identity) {
        if (identity.error().code() == ENOENT) {
            return failure(FailureKind::TemplateNotFound, what, ENOENT,
                           "no template '" + name + "' (looked for " + info.path + ")");
        }
        info.problem = identity.error().message();
    } else {
        info.size_bytes = identity->size_bytes;
        info.digest = ctx.digests.known_or_request(info.path, *identity);
    }
    info.users = users_of(ctx, info.path);
    info.sandboxes = info.users.size();
    return info;
}

Result<TemplateMatch, Failure> find_template_by_digest(OperationContext& ctx,
                                                       const DigestSearch& search,
                                                       const std::string& what) {
    const bool whole = !is_blocks_digest(search.digest);
    auto listed = template_names(ctx);
    if (!listed) {
        return internal(std::move(listed).error().within(what));
    }
    std::vector<std::string> names = std::move(listed).value();
    // The name it is likely under first: the usual case, and the only digest computed when the
    // digests are cached already.
    std::stable_partition(names.begin(), names.end(),
                          [&](const auto& n) { return n == search.first; });
    std::vector<std::string> pending;
    for (const auto& name : names) {
        const std::string path = ctx.template_path(name);
        auto identity = ctx.platform.inspect_template(path);
        if (!identity ||
            (search.served_bytes != 0 && identity->served_bytes() != search.served_bytes)) {
            continue;  // not usable as a template (see GET /templates), or another size
        }
        std::optional<std::string> digest;
        if (search.read_pending) {
            // A whole-image SHA-256 (a version 1 archive) is computed on demand, once per
            // template version, then cached.
            auto read = whole ? ctx.digests.whole_sha256(path, *identity)
                              : ctx.digests.wait(path, *identity);
            if (read) {
                digest = *read;
            }
        } else if (!whole) {
            digest = ctx.digests.known(path, *identity);
            if (!digest) {
                ctx.digests.request(path, *identity);
                pending.push_back(name);
            }
        }
        if (digest && *digest == search.digest) {
            TemplateIdentity matched = *identity;
            matched.digest = whole ? ctx.digests.known_or_request(path, *identity) : *digest;
            return TemplateMatch{name, matched};
        }
    }
    if (!pending.empty()) {
        std::string list;
        for (const auto& n : pending) {
            list += (list.empty() ? "" : ", ") + n;
        }
        return failure(FailureKind::DigestPending, what, EAGAIN,
                       "no template in " + ctx.options.templates_dir + " is known to have digest " +
                           search.digest + ", and the digests of " + list +
                           " are still being read (\"pending\" in GET /templates): retry "
                           "once they are known");
    }
    return failure(FailureKind::TemplateNotFound, what, ENOENT,
                   "no template in " + ctx.options.templates_dir + " has digest " + search.digest +
                       ": upload it with PUT /templates/{name}?digest=" + search.digest);
}

Result<TemplateGuards::Hold, Failure> share_template(OperationContext& ctx, const std::string& name,
                                                     const std::string& what) {
    auto hold = ctx.guards.share(name);
    if (!hold) {
        return failure(FailureKind::TemplateBusy, what, EBUSY,
                       "template '" + name + "' is being " + ctx.guards.owner(name) +
                           "; retry when that has ended");
    }
    return std::move(*hold);
}

Result<TemplateGuards::Hold, Failure> own_template(OperationContext& ctx, const std::string& name,
                                                   const std::string& doing,
                                                   const std::string& what) {
    auto hold = ctx.guards.own(name);
    if (!hold) {
        const std::string owner = ctx.guards.owner(name);
        return failure(FailureKind::TemplateBusy, what, EBUSY,
                       owner.empty() ? "a create or import over template '" + name +
                                           "' is in progress; retry when it has ended"
                                     : "template '" + name + "' is being " + owner +
                                           "; retry when that has ended");
    }
    hold->describe(doing);
    return std::move(*hold);
}

}  // namespace wrenn::agent
