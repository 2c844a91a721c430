#include "agent/templates/image_sender.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <utility>
#include <vector>

#include "agent/state/template_blocks.hpp"
#include "archive/writer.hpp"

namespace wrenn::agent {

namespace {

// The chunks [first, end) that the file's data ranges touch, in order.
using ChunkRuns = std::vector<std::pair<std::uint64_t, std::uint64_t>>;

Result<ChunkRuns> data_chunks(int fd, std::uint64_t size, const std::string& action) {
    ChunkRuns runs;
    std::uint64_t at = 0;
    while (at < size) {
        const off_t data = ::lseek(fd, static_cast<off_t>(at), SEEK_DATA);
        if (data < 0) {
            if (errno == ENXIO) {
                break;  // a hole to the end
            }
            return Error(action + ": seek data", errno);
        }
        const off_t hole = ::lseek(fd, data, SEEK_HOLE);
        if (hole < 0) {
            return Error(action + ": seek hole", errno);
        }
        const std::uint64_t end = std::min<std::uint64_t>(static_cast<std::uint64_t>(hole), size);
        if (static_cast<std::uint64_t>(data) >= end) {
            break;
        }
        const std::uint64_t first = static_cast<std::uint64_t>(data) / kLeafBytes;
        const std::uint64_t last = (end + kLeafBytes - 1) / kLeafBytes;
        if (!runs.empty() && runs.back().second >= first) {
            runs.back().second = std::max(runs.back().second, last);
        } else {
            runs.emplace_back(first, last);
        }
        at = end;
    }
    return runs;
}

}  // namespace

Result<SentImage> send_image(const std::string& path, const TemplateImage& image,
                             const std::string& digest, const std::string& name, bool compress,
                             const archive::ByteSink& sink) {
    const std::string action = "send template " + path;
    const int fd = image.fd.get();
    const std::uint64_t size = image.identity.size_bytes;
    auto runs = data_chunks(fd, size, action);
    if (!runs) {
        return std::move(runs).error();
    }
    archive::Header header;
    header.image = true;
    header.compressed = compress;
    header.chunk_bytes = kLeafBytes;
    header.origin_bytes = size;
    header.template_name = name;
    for (const auto& [first, end] : *runs) {
        header.chunk_count += end - first;
    }
    if (auto named = archive::set_template_digest(header, digest); !named) {
        return std::move(named).error().within(action);
    }
    if (header.version != archive::kVersion) {
        return Error(action, EINVAL, "a template image stream names a blocks-sha256-4k digest");
    }
    auto writer = archive::Writer::create(header, sink);
    if (!writer) {
        return std::move(writer).error().within(action);
    }
    // Read in runs of up to 1 MiB; the tail of the last chunk past the image's end is zeros.
    constexpr std::uint64_t kReadChunks = 256;
    std::vector<std::byte> buffer(kReadChunks * kLeafBytes);
    for (const auto& [first, end] : *runs) {
        for (std::uint64_t chunk = first; chunk < end;) {
            const std::uint64_t n = std::min(kReadChunks, end - chunk);
            const std::uint64_t offset = chunk * kLeafBytes;
            const std::uint64_t want = std::min(n * kLeafBytes, size - offset);
            std::fill(buffer.begin(), buffer.end(), std::byte{0});
            std::uint64_t got = 0;
            while (got < want) {
                const ssize_t r =
                    ::pread(fd, buffer.data() + got, want - got, static_cast<off_t>(offset + got));
                if (r < 0 && errno == EINTR) {
                    continue;
                }
                if (r < 0) {
                    return Error(action + ": read", errno);
                }
                if (r == 0) {
                    return Error(action, ESTALE, "the image shrank while it was sent");
                }
                got += static_cast<std::uint64_t>(r);
            }
            for (std::uint64_t i = 0; i < n; ++i) {
                if (auto added = writer->add_chunk(
                        chunk + i, std::span(buffer.data() + i * kLeafBytes, kLeafBytes));
                    !added) {
                    return std::move(added).error().within(action);
                }
            }
            chunk += n;
        }
    }
    // The digest in the header is of the state the image was opened in: one that changed
    // meanwhile is cut off here, before the trailer would make the stream valid.
    auto now = inspect_open_template(fd, path);
    if (!now) {
        return std::move(now).error().within(action);
    }
    if (!now->same_file_state(image.identity)) {
        return Error(action, ESTALE,
                     "the image changed while it was sent (" +
                         now->describe_change_from(image.identity) + ")");
    }
    if (auto finished = writer->finish(); !finished) {
        return std::move(finished).error().within(action);
    }
    return SentImage{header.chunk_count, writer->bytes_written()};
}

}  // namespace wrenn::agent
