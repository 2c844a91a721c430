#pragma once

// A template image sent as a template image stream (docs/archive.md): the image's chunks over
// zeros, read where the file has data (SEEK_DATA/SEEK_HOLE), so that holes cost nothing.
#include <cstdint>
#include <string>

#include "agent/state/template_image.hpp"
#include "archive/format.hpp"
#include "common/result.hpp"

namespace wrenn::agent {

struct SentImage {
    std::uint64_t chunks = 0;        // chunks sent (those of the data ranges)
    std::uint64_t stream_bytes = 0;  // what the sink received
};

// Writes `image` (open, in the state `digest` was read from) named `name` to `sink`. The
// chunks are those the file's data ranges touch, counted before the first byte; a chunk of
// zeros inside a data range is sent too (zstd makes it a few bytes). An image that changes
// while it is read fails with ESTALE before the trailer, so that no reader accepts the stream.
Result<SentImage> send_image(const std::string& path, const TemplateImage& image,
                             const std::string& digest, const std::string& name, bool compress,
                             const archive::ByteSink& sink);

}  // namespace wrenn::agent
