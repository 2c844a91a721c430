// The sandbox manager's side of templates: which image a create uses, whether a sandbox's
// template is still the image it was made over, and the list the API shows.
#include <dirent.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/post.hpp>
#include <cerrno>

#include "agent/sandbox_manager.hpp"

namespace wrenn::agent {

namespace {

// A template the agent will not use: its errno says why (see Platform::inspect_template).
Failure template_refused(const std::string& name, const std::string& path, Error error) {
    switch (error.code()) {
        case ENOENT:
            return failure(FailureKind::TemplateNotFound, error.action(), 0,
                           "no template '" + name + "' (looked for " + path + ")");
        case ELOOP:
        case EPERM:
        case EINVAL:
            return Failure{FailureKind::InvalidRequest, std::move(error)};
        default:
            return Failure{FailureKind::Internal, std::move(error)};
    }
}

}  // namespace

std::string SandboxManager::template_path(const std::string& name) const {
    return options_.templates_dir + "/" + name + ".img";
}

Outcome<TemplateIdentity> SandboxManager::identify_template(const std::string& name,
                                                            const std::string& what) {
    const std::string path = template_path(name);
    auto identity = platform_.inspect_template(path);
    if (!identity) {
        return template_refused(name, path, std::move(identity).error().within(what));
    }
    auto digested = digests_.digest(path, *identity);
    if (!digested) {
        return Failure{FailureKind::Internal, std::move(digested).error().within(what)};
    }
    return *digested;
}

Outcome<std::optional<TemplateIdentity>> SandboxManager::verify_template(const Sandbox& sb,
                                                                         const std::string& what) {
    if (sb.origin.type != OriginSpec::Type::Loop) {
        return std::optional<TemplateIdentity>{};
    }
    const std::string& path = sb.origin.path;
    const std::string label = "template '" + sb.template_name + "' (" + path + ")";
    const std::string restore =
        "; the sandbox's CoW is kept: put the original image back at that path to use it again";
    auto now = platform_.inspect_template(path);
    if (!now) {
        if (now.error().code() == ENOENT) {
            return failure(FailureKind::TemplateChanged, what, 0, label + " is gone" + restore);
        }
        return template_refused(sb.template_name, path, std::move(now).error().within(what));
    }
    const auto& recorded = sb.origin.identity;
    if (recorded && now->same_file_state(*recorded)) {
        return std::optional<TemplateIdentity>{*recorded};
    }
    auto digested = digests_.digest(path, *now);
    if (!digested) {
        return Failure{FailureKind::Internal, std::move(digested).error().within(what)};
    }
    if (!recorded) {
        // A record from before template identities: the image as it is now becomes the one the
        // sandbox is taken to be made over. Nothing better is known.
        spdlog::warn("sandbox={} {} had no recorded identity; recording sha256 {} now", sb.id,
                     label, digested->sha256);
        return std::optional<TemplateIdentity>{*digested};
    }
    if (digested->size_bytes != recorded->size_bytes || digested->sha256 != recorded->sha256) {
        return failure(FailureKind::TemplateChanged, what, 0,
                       label + " is not the image this sandbox was made over (" +
                           digested->describe_change_from(*recorded) +
                           "); using its CoW over other bytes would corrupt the filesystem" +
                           restore + " (sha256 " + recorded->sha256 + ")");
    }
    spdlog::info("sandbox={} {}: same content (sha256 {}), new file state ({}); identity updated",
                 sb.id, label, digested->sha256, digested->describe_change_from(*recorded));
    return std::optional<TemplateIdentity>{*digested};
}

void SandboxManager::list_templates(Callback<std::vector<TemplateInfo>> done) {
    boost::asio::post(queries_, [this, done = std::move(done)] {
        std::map<std::string, std::size_t> users;
        for (const auto& sb : list()) {
            if (!sb.template_name.empty()) {
                ++users[sb.template_name];
            }
        }
        std::vector<TemplateInfo> out;
        DIR* dir = ::opendir(options_.templates_dir.c_str());
        if (dir == nullptr) {
            if (errno == ENOENT) {
                done(std::move(out));
            } else {
                done(Failure{FailureKind::Internal,
                             errno_error("list templates in " + options_.templates_dir)});
            }
            return;
        }
        std::vector<std::string> names;
        while (const dirent* e = ::readdir(dir)) {
            std::string file = e->d_name;
            if (file.size() <= 4 || file.compare(file.size() - 4, 4, ".img") != 0) {
                continue;
            }
            std::string name = file.substr(0, file.size() - 4);
            if (is_valid_name(name)) {
                names.push_back(std::move(name));
            }
        }
        ::closedir(dir);
        std::sort(names.begin(), names.end());
        for (const auto& name : names) {
            TemplateInfo info{name, template_path(name), 0, users[name], {}, {}};
            auto identity = platform_.inspect_template(info.path);
            if (!identity) {
                if (identity.error().code() == ENOENT) {
                    continue;  // removed while we looked
                }
                info.problem = identity.error().message();
            } else {
                info.size_bytes = identity->size_bytes;
                auto digested = digests_.digest(info.path, *identity);
                if (digested) {
                    info.sha256 = digested->sha256;
                } else {
                    info.problem = digested.error().message();
                }
            }
            out.push_back(std::move(info));
        }
        done(std::move(out));
    });
}

}  // namespace wrenn::agent
