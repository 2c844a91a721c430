// Download: GET /templates/{name}/image, the image as a template image stream.
#include <spdlog/spdlog.h>

#include <cerrno>

#include "agent/catalog/catalog.hpp"
#include "agent/templates/image_sender.hpp"

namespace wrenn::agent {

Result<PreparedDownload, Failure> prepare_download(OperationContext& ctx, const std::string& name,
                                                   bool compress) {
    const std::string what = "download template " + name;
    if (auto bad = check_name(name, "template", what)) {
        return *bad;
    }
    const std::string path = ctx.template_path(name);
    auto identity = ctx.platform.inspect_template(path);
    if (!identity) {
        if (identity.error().code() == ENOENT) {
            return failure(FailureKind::TemplateNotFound, what, ENOENT,
                           "no template '" + name + "' (looked for " + path + ")");
        }
        return Failure{FailureKind::InvalidRequest, std::move(identity).error().within(what)};
    }
    // The stream's header names the digest: known, or read now (this request is about the bytes).
    auto digest = ctx.digests.wait(path, *identity);
    if (!digest) {
        return Failure{
            digest.error().code() == ESTALE ? FailureKind::TemplateChanged : FailureKind::Internal,
            std::move(digest).error().within(what)};
    }
    auto image = ctx.platform.open_template_version(path, *identity);
    if (!image) {
        return Failure{
            image.error().code() == ESTALE ? FailureKind::TemplateChanged : FailureKind::Internal,
            std::move(image).error().within(what)};
    }
    return PreparedDownload{name, path, compress, std::move(image).value(), *digest};
}

Result<TransferStats, Failure> stream_download(OperationContext& /*ctx*/,
                                               PreparedDownload& prepared,
                                               const ExportBegin& begin) {
    const std::string what = "download template " + prepared.name;
    auto sent = send_image(prepared.path, prepared.image, prepared.digest, prepared.name + ".img",
                           prepared.compress, begin());
    if (!sent) {
        return internal(std::move(sent).error().within(what));
    }
    spdlog::info("template {}: sent {} chunks, {} bytes{}", prepared.path, sent->chunks,
                 sent->stream_bytes, prepared.compress ? " (zstd)" : "");
    return TransferStats{sent->chunks, sent->stream_bytes};
}

}  // namespace wrenn::agent
