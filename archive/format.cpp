#include "archive/format.hpp"

#include <boost/algorithm/hex.hpp>
#include <cerrno>
#include <string_view>

#include "common/digest.hpp"
#include "common/text.hpp"

namespace wrenn::archive {

namespace {
constexpr std::string_view kBlocksName = "blocks-sha256-4k:";
constexpr std::string_view kWholeName = "sha256:";
}  // namespace

std::string Header::template_digest_name() const {
    return std::string(version == kWholeSha256Version ? kWholeName : kBlocksName) +
           to_hex(template_digest.data(), template_digest.size());
}

Result<void> set_template_digest(Header& header, std::string_view named) {
    std::string_view hex;
    if (named.starts_with(kBlocksName)) {
        header.version = kVersion;
        hex = named.substr(kBlocksName.size());
    } else if (named.starts_with(kWholeName)) {
        header.version = kWholeSha256Version;
        hex = named.substr(kWholeName.size());
    } else {
        return Error("archive template digest", EINVAL,
                     "'" + std::string(named.substr(0, 80)) + "' names no known algorithm");
    }
    auto digest = parse_sha256_hex(hex);
    if (!digest) {
        return std::move(digest).error();
    }
    header.template_digest = *digest;
    return success();
}

Result<void> check_header(const Header& h) {
    auto bad = [](std::string detail) { return Error("check archive header", EINVAL, detail); };
    if (h.version != kVersion && h.version != kWholeSha256Version) {
        return bad("version " + std::to_string(h.version) + " is not 1 or 2");
    }
    if (h.image && h.version != kVersion) {
        return bad("a template image stream is version 2");
    }
    if (h.chunk_bytes < kMinChunkBytes || h.chunk_bytes > kMaxChunkBytes ||
        (h.chunk_bytes & (h.chunk_bytes - 1)) != 0) {
        return bad("chunk size " + std::to_string(h.chunk_bytes) +
                   " is not a power of two from 512 to 1048576");
    }
    if (h.origin_bytes == 0 || h.origin_bytes % 512 != 0) {
        return bad("origin size " + std::to_string(h.origin_bytes) +
                   " is not a non-zero multiple of 512");
    }
    if (h.chunk_count > h.origin_chunks()) {
        return bad(std::to_string(h.chunk_count) + " chunks, more than the origin's " +
                   std::to_string(h.origin_chunks()));
    }
    if (h.template_name.empty() || h.template_name.size() > kMaxNameBytes ||
        h.template_name.find('/') != std::string::npos || !is_clean_utf8(h.template_name)) {
        return bad(
            "template name must be 1 to 255 bytes of UTF-8 text without '/' or control "
            "characters");
    }
    return success();
}

Result<std::array<std::uint8_t, kDigestBytes>> parse_sha256_hex(std::string_view hex) {
    if (hex.size() != 2 * kDigestBytes) {
        return Error("parse SHA-256", EINVAL,
                     "expected 64 hex digits, got " + std::to_string(hex.size()) + " characters");
    }
    std::array<std::uint8_t, kDigestBytes> out{};
    try {
        boost::algorithm::unhex(hex.begin(), hex.end(), out.begin());
    } catch (const boost::algorithm::hex_decode_error&) {
        return Error("parse SHA-256", EINVAL, "expected 64 hex digits, got another character");
    }
    return out;
}

}  // namespace wrenn::archive
