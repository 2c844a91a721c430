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

Result<TemplateIdentity, Failure> SandboxManager::identify_template(const std::string& name,
                                                            const std::string& what) {
    const std::string path = template_path(name);
    auto identity = platform_.inspect_template(path);
    if (!identity) {
        return template_refused(name, path, std::move(identity).error().within(what));
    }
    // Never waits for a digest: a version never seen is read in the background, and its digest
    // written into the records made over it once known (record_digest).
    identity->digest = digests_.known_or_request(path, *identity);
    return *identity;
}

Result<std::optional<TemplateIdentity>, Failure> SandboxManager::verify_template(const Sandbox& sb,
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
    std::optional<TemplateIdentity> recorded = sb.origin.identity;
    if (recorded && recorded->digest.empty()) {
        // Made while its digest was pending: known by now if the background read finished.
        if (auto digest = digests_.known(path, *recorded)) {
            recorded->digest = *digest;
        }
    }
    if (recorded && now->same_file_state(*recorded)) {
        if (recorded->digest.empty()) {
            digests_.request(path, *recorded);
        }
        return recorded;
    }
    if (!recorded) {
        // A record from before template identities: the image as it is now becomes the one the
        // sandbox is taken to be made over. Nothing better is known.
        now->digest = digests_.known_or_request(path, *now);
        spdlog::warn("sandbox={} {} had no recorded identity; recording its present state now",
                     sb.id, label);
        return std::optional<TemplateIdentity>{*now};
    }
    if (recorded->digest.empty()) {
        return failure(FailureKind::TemplateChanged, what, 0,
                       label + " changed (" + now->describe_change_from(*recorded) +
                           ") before the agent had read the version this sandbox was made over, "
                           "so nothing shows it holds the same bytes; using its CoW over other "
                           "bytes would corrupt the filesystem" +
                           restore);
    }
    // Same content in a new file state (a touch, a copy renamed over it) keeps the sandbox
    // usable: decided by the digest of the image now, in the algorithm the record names.
    const bool whole = !is_blocks_digest(recorded->digest);
    auto digest = whole ? digests_.whole_sha256(path, *now) : digests_.wait(path, *now);
    if (!digest) {
        return Failure{FailureKind::Internal, std::move(digest).error().within(what)};
    }
    TemplateIdentity current = *now;
    current.digest = *digest;
    if (current.size_bytes != recorded->size_bytes || current.digest != recorded->digest) {
        return failure(FailureKind::TemplateChanged, what, 0,
                       label + " is not the image this sandbox was made over (" +
                           current.describe_change_from(*recorded) +
                           "); using its CoW over other bytes would corrupt the filesystem" +
                           restore + " (" + recorded->digest + ")");
    }
    if (whole) {
        // The record moves on to the blocks digest once it is known (record_digest).
        if (auto blocks = digests_.known_or_request(path, *now); !blocks.empty()) {
            current.digest = blocks;
        }
    }
    spdlog::info("sandbox={} {}: same content ({}), new file state ({}); identity updated", sb.id,
                 label, *digest, now->describe_change_from(*recorded));
    return std::optional<TemplateIdentity>{current};
}

// A template version's digest is known: each sandbox made over exactly that version without it
// gets it in its record, on its strand, so that it never races the sandbox's operations.
void SandboxManager::record_digest(const std::string& path, const TemplateIdentity& version) {
    auto lacks = [path, version](const Sandbox& sb) {
        const auto& id = sb.origin.identity;
        return sb.origin.type == OriginSpec::Type::Loop && sb.origin.path == path && id &&
               id->same_file_state(version) && !is_blocks_digest(id->digest);
    };
    // A create, fork or import in flight may be about to record this version without its
    // digest: its entry is not ready yet, and the job below runs on its strand after it.
    std::vector<EntryPtr> targets;
    {
        std::lock_guard lock(mu_);
        for (const auto& [id, entry] : entries_) {
            if (!entry->gone && (!entry->ready || lacks(entry->record))) {
                targets.push_back(entry);
            }
        }
    }
    for (auto& entry : targets) {
        {
            std::lock_guard lock(idle_mu_);
            ++in_flight_;
        }
        auto& strand = entry->strand;  // before the entry moves into the job
        boost::asio::post(strand, [this, entry = std::move(entry), lacks, version]() mutable {
            Sandbox next;
            bool gone = false;
            {
                std::lock_guard lock(mu_);
                gone = entry->gone;
                next = entry->record;
            }
            if (!gone && lacks(next)) {
                next.origin.identity->digest = version.digest;
                if (auto written = commit(entry, next); !written) {
                    // Memory has it; the next start finds it in the digest cache again.
                    spdlog::warn("sandbox={} record template digest: {}", next.id,
                                 written.error().message());
                } else {
                    spdlog::debug("sandbox={} template digest recorded: {}", next.id,
                                  version.digest);
                }
            }
            entry.reset();
            std::lock_guard lock(idle_mu_);
            if (--in_flight_ == 0) {
                idle_cv_.notify_all();
            }
        });
    }
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
            TemplateInfo info{name, template_path(name), 0, users[name], {}, {}, {}};
            auto identity = platform_.inspect_template(info.path);
            if (!identity) {
                if (identity.error().code() == ENOENT) {
                    continue;  // removed while we looked
                }
                info.problem = identity.error().message();
            } else {
                info.size_bytes = identity->size_bytes;
                // Never read here: a version not yet known shows as pending.
                info.digest = digests_.known_or_request(info.path, *identity);
            }
            out.push_back(std::move(info));
        }
        done(std::move(out));
    });
}

}  // namespace wrenn::agent
