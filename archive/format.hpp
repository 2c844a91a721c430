#pragma once

// The sandbox archive's constants and header (docs/archive.md is the specification; every
// number here is in it).

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>

#include "common/result.hpp"

namespace wrenn::archive {

inline constexpr std::array<std::uint8_t, 8> kMagic{0x89, 'W', 'R', 'E', 'N', 'N', '\r', '\n'};
inline constexpr std::array<std::uint8_t, 8> kEndMagic{'W', 'R', 'E', 'N', 'N', 'E', 'N', 'D'};
// Version 2 names the template by its blocks-sha256-4k digest; version 1 (still read) by the
// SHA-256 of its whole content. The two differ only in what template_digest is.
inline constexpr std::uint32_t kVersion = 2;
inline constexpr std::uint32_t kWholeSha256Version = 1;
inline constexpr std::uint32_t kFlagCompressed = 1;
// A template image stream: the records are an image's chunks over zeros, not a sandbox's over a
// template, and template_digest is the image's own digest (docs/archive.md).
inline constexpr std::uint32_t kFlagImage = 2;
inline constexpr std::size_t kFixedHeaderBytes = 72;  // the header before the template name
inline constexpr std::size_t kMaxNameBytes = 255;
inline constexpr std::uint32_t kMinChunkBytes = 512;
inline constexpr std::uint32_t kMaxChunkBytes = 1 << 20;
inline constexpr std::size_t kIndexBytes = 8;              // a record's u64 index
inline constexpr std::size_t kFrameHeadBytes = 8;          // u32 raw_bytes, u32 zstd_bytes
inline constexpr std::size_t kMaxFrameRawBytes = 4 << 20;  // a reader's limit
inline constexpr std::size_t kTrailerBytes = 40;           // end magic + SHA-256
inline constexpr std::size_t kDigestBytes = 32;
// MIME type of the stream (the API's export and import routes).
inline constexpr const char* kContentType = "application/vnd.wrenn.sandbox";
// MIME type of a template image stream (GET /templates/{name}/image, PUT /templates/{name}).
inline constexpr const char* kImageContentType = "application/vnd.wrenn.template";

// What an archive's header says. The writer takes one (version 2, or 1 to name the template by
// its whole SHA-256); the reader yields one.
struct Header {
    std::uint32_t version = kVersion;
    bool compressed = true;
    // A template image stream (kFlagImage): chunks not in it are zeros, and template_digest and
    // template_name are the image's own.
    bool image = false;
    std::uint32_t chunk_bytes = 4096;
    std::uint64_t origin_bytes = 0;
    std::uint64_t chunk_count = 0;
    std::array<std::uint8_t, kDigestBytes> template_digest{};
    std::string template_name;

    [[nodiscard]] std::uint64_t origin_chunks() const {
        return (origin_bytes + chunk_bytes - 1) / chunk_bytes;
    }
    [[nodiscard]] std::size_t record_bytes() const { return kIndexBytes + chunk_bytes; }
    [[nodiscard]] std::size_t header_bytes() const {
        return kFixedHeaderBytes + template_name.size();
    }
    // The template digest named by its algorithm, as GET /templates shows it:
    // "blocks-sha256-4k:<hex>" (version 2) or "sha256:<hex>" (version 1).
    [[nodiscard]] std::string template_digest_name() const;
};

// The rules of docs/archive.md's header table, for a header about to be written: an error
// (EINVAL) naming the first field that breaks one.
Result<void> check_header(const Header& header);

// Parses 64 hex digits (either case) into a digest; EINVAL otherwise.
Result<std::array<std::uint8_t, kDigestBytes>> parse_sha256_hex(std::string_view hex);
// The header's version and digest for a digest named by its algorithm ("blocks-sha256-4k:<hex>"
// or "sha256:<hex>"); EINVAL for any other.
Result<void> set_template_digest(Header& header, std::string_view named);

// Where the writer puts its bytes: called with each piece in order; an error stops the writer.
using ByteSink = std::function<Result<void>(std::span<const std::byte>)>;

}  // namespace wrenn::archive
