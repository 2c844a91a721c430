#pragma once

// The templates, as the API and the sandbox operations see them: which image a create uses and
// whether a sandbox's image is still the one it was made over (identity.cpp), what GET
// /templates shows and which image has a digest (listing.cpp), and the image routes: upload
// (upload.cpp), download (download.cpp) and delete (removal.cpp). Functions over an
// OperationContext; none runs on a sandbox's strand. A name being uploaded or deleted is held
// alone in ctx.guards, and a create or import over it holds it shared.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "agent/state/sandbox.hpp"
#include "agent/table/checks.hpp"
#include "agent/table/failure.hpp"
#include "agent/table/operation_context.hpp"
#include "agent/templates/image_receiver.hpp"
#include "agent/templates/template_guards.hpp"
#include "agent/transfer/transfer.hpp"

namespace wrenn::agent {

// A sandbox made over a template.
struct TemplateUser {
    std::string id;
    SandboxState state = SandboxState::Paused;
};

struct TemplateInfo {
    std::string name;
    std::string path;
    std::uint64_t size_bytes = 0;
    std::size_t sandboxes = 0;
    // "blocks-sha256-4k:<hex>"; empty while the agent reads it in the background, or when the
    // image cannot be used (see problem).
    std::string digest;
    std::string problem;  // why the agent refuses this image, e.g. a symlink or a foreign owner
    std::string sha256;   // the whole image's "sha256:<hex>", known only once something needed it
    std::vector<TemplateUser> users;               // GET /templates/{name}: who uses it
    std::optional<std::uint64_t> allocated_bytes;  // an upload: what the image takes on disk
    bool existed = false;  // an upload that found the same image there already (200)
};

// ---- identity.cpp ----
// The image a create of `name` uses now, checked, with its digest if known (never waits).
Result<TemplateIdentity, Failure> identify_template(OperationContext& ctx, const std::string& name,
                                                    const std::string& what);
// Whether a loop-origin sandbox's template is still the image it was made over: the identity
// to record from now on (nullopt for other origins), or 409 template_changed.
Result<std::optional<TemplateIdentity>, Failure> verify_template(OperationContext& ctx,
                                                                 const Sandbox& sb,
                                                                 const std::string& what);
// TemplateDigests' callback: writes a version's new-found digest into its sandboxes' records,
// each on its strand.
void record_digest(OperationContext& ctx, const std::string& path, const TemplateIdentity& version);

// ---- listing.cpp ----
// The names of the templates in templates_dir (<name>.img with a valid name), sorted.
Result<std::vector<std::string>> template_names(const OperationContext& ctx);
// Every template in templates_dir, as GET /templates shows it; never reads an image.
Result<std::vector<TemplateInfo>, Failure> list_templates(OperationContext& ctx);
// One template with the sandboxes made over it (running and paused); never reads an image.
Result<TemplateInfo, Failure> template_info(OperationContext& ctx, const std::string& name);

struct TemplateMatch {
    std::string name;
    TemplateIdentity identity;  // with its digest
};
// How find_template_by_digest looks.
struct DigestSearch {
    std::string digest;              // "blocks-sha256-4k:<hex>" or "sha256:<hex>"
    std::uint64_t served_bytes = 0;  // only images of this size (0: any)
    std::string first;               // the name to try first (an archive's own)
    // Read a version's digest when it is not known yet (an import, which is about those bytes);
    // else a pending one answers 503 digest_pending (a create never reads an image).
    bool read_pending = false;
};
// The template in templates_dir whose content has the digest, or 404 template_not_found
// naming it (503 digest_pending when a pending digest may be it).
Result<TemplateMatch, Failure> find_template_by_digest(OperationContext& ctx,
                                                       const DigestSearch& search,
                                                       const std::string& what);
// A shared hold on a template name for a create or an import, or 409 template_busy.
Result<TemplateGuards::Hold, Failure> share_template(OperationContext& ctx, const std::string& name,
                                                     const std::string& what);

// The only hold on a template name for an upload or a delete (`doing`: "uploaded",
// "deleted"), or 409 template_busy saying who holds it.
Result<TemplateGuards::Hold, Failure> own_template(OperationContext& ctx, const std::string& name,
                                                   const std::string& doing,
                                                   const std::string& what);

// ---- upload.cpp ----
struct UploadRequest {
    std::string name;
    std::string digest;  // the digest the image must have: "blocks-sha256-4k:<hex>"
    ImageForm form = ImageForm::Detect;
    std::optional<std::uint64_t> content_length;  // of the body, when the client sent one
};
// PUT /templates/{name}: the image read through read_body into a temp file beside the
// templates, checked against the digest and published as <name>.img (0444, fsynced, renamed
// without replacing); refused uploads leave no file. Runs on a transfer thread.
Result<TemplateInfo, Failure> upload_template(OperationContext& ctx, const UploadRequest& request,
                                              const ReadBody& read_body);

// ---- download.cpp ----
// A download in two steps: the checks and the digest (read now if pending), then the stream.
struct PreparedDownload {
    std::string name;
    std::string path;
    bool compress = true;
    TemplateImage image;  // open, in the state the digest is of
    std::string digest;
};
Result<PreparedDownload, Failure> prepare_download(OperationContext& ctx, const std::string& name,
                                                   bool compress);
Result<TransferStats, Failure> stream_download(OperationContext& ctx, PreparedDownload& prepared,
                                               const ExportBegin& begin);

// ---- removal.cpp ----
// DELETE /templates/{name}: 409 template_in_use while a sandbox is made over it; else the
// image, its cached digest and loops of it no sandbox holds go.
Result<Done, Failure> delete_template(OperationContext& ctx, const std::string& name);

}  // namespace wrenn::agent
