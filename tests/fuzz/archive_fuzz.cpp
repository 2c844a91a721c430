// libFuzzer target over the sandbox archive reader (archive::Reader), as the import route feeds
// it an HTTP body. The first byte picks the size of the pieces the rest is fed in, so that
// every split of a part across feeds is reached. Beyond "no crash, no UB": a reader error always
// names a byte offset inside what was fed, the chunks it yields are in increasing order and of
// the header's chunk size, and an accepted uncompressed stream, written again by the Writer
// from what was read, is the same bytes.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "archive/reader.hpp"
#include "archive/writer.hpp"

namespace {

[[noreturn]] void fail(const std::string& what) {
    std::fprintf(stderr, "archive_fuzz: %s\n", what.c_str());
    std::abort();
}

struct Chunk {
    std::uint64_t index;
    std::vector<std::byte> data;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) {
        return 0;
    }
    const std::size_t piece = data[0] % 64 + 1;
    const auto stream = std::span(reinterpret_cast<const std::byte*>(data) + 1, size - 1);

    std::optional<wrenn::archive::Header> header;
    std::vector<Chunk> chunks;
    wrenn::archive::Reader reader(
        [&](const wrenn::archive::Header& h) -> wrenn::Result<void> {
            header = h;
            return wrenn::success();
        },
        [&](std::uint64_t index, std::span<const std::byte> bytes) -> wrenn::Result<void> {
            if (!header || bytes.size() != header->chunk_bytes) {
                fail("a chunk before the header or of the wrong size");
            }
            if (!chunks.empty() && index <= chunks.back().index) {
                fail("chunks out of order");
            }
            if (index >= header->origin_chunks()) {
                fail("a chunk past the origin");
            }
            chunks.push_back({index, std::vector<std::byte>(bytes.begin(), bytes.end())});
            return wrenn::success();
        });
    wrenn::Result<void> result;
    for (std::size_t at = 0; at < stream.size() && result.ok(); at += piece) {
        result = reader.feed(stream.subspan(at, std::min(piece, stream.size() - at)));
    }
    if (result.ok()) {
        result = reader.finish();
    }
    if (!result.ok()) {
        const auto msg = result.error().message();
        const auto at = msg.find("read archive at byte ");
        if (at != 0) {
            fail("an error that names no byte: " + msg);
        }
        if (std::stoull(msg.substr(21)) > stream.size()) {
            fail("an error past the end of the input: " + msg);
        }
        return 0;
    }
    if (!header || chunks.size() != header->chunk_count) {
        fail("accepted without a header or with the wrong chunk count");
    }
    if (header->compressed) {
        return 0;
    }
    std::vector<std::byte> again;
    auto writer = wrenn::archive::Writer::create(*header, [&](std::span<const std::byte> b) {
        again.insert(again.end(), b.begin(), b.end());
        return wrenn::success();
    });
    if (!writer) {
        fail("the writer refuses a header the reader accepted: " + writer.error().message());
    }
    for (const auto& c : chunks) {
        if (!writer->add_chunk(c.index, c.data)) {
            fail("the writer refuses a chunk the reader accepted");
        }
    }
    if (!writer->finish() || again.size() != stream.size() ||
        !std::equal(again.begin(), again.end(), stream.begin())) {
        fail("an accepted uncompressed stream is not what the writer makes of it");
    }
    return 0;
}
