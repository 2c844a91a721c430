#include <catch2/catch.hpp>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "archive/format.hpp"
#include "archive/reader.hpp"
#include "archive/writer.hpp"
#include "common/digest.hpp"

using namespace wrenn;
using namespace wrenn::archive;

namespace {

using Bytes = std::vector<std::byte>;

struct Chunk {
    std::uint64_t index;
    Bytes data;
};

Bytes pattern(std::size_t n, std::uint8_t seed) {
    Bytes out(n);
    for (std::size_t i = 0; i < n; ++i) {
        out[i] = static_cast<std::byte>(seed + i * 7 + (i >> 8));
    }
    return out;
}

Header small_header(bool compressed, std::uint64_t count, std::uint32_t chunk_bytes = 512) {
    Header h;
    h.compressed = compressed;
    h.chunk_bytes = chunk_bytes;
    h.origin_bytes = 64ull * chunk_bytes;
    h.chunk_count = count;
    for (std::size_t i = 0; i < h.template_digest.size(); ++i) {
        h.template_digest[i] = static_cast<std::uint8_t>(0xa0 + i);
    }
    h.template_name = "base.img";
    return h;
}

std::vector<Chunk> chunks_at(const std::vector<std::uint64_t>& indexes, std::size_t chunk_bytes) {
    std::vector<Chunk> out;
    for (auto i : indexes) {
        out.push_back({i, pattern(chunk_bytes, static_cast<std::uint8_t>(i))});
    }
    return out;
}

Bytes write_stream(const Header& h, const std::vector<Chunk>& chunks) {
    Bytes out;
    auto w = Writer::create(h, [&](std::span<const std::byte> b) -> Result<void> {
        out.insert(out.end(), b.begin(), b.end());
        return success();
    });
    REQUIRE(w.ok());
    for (const auto& c : chunks) {
        REQUIRE(w->add_chunk(c.index, c.data).ok());
    }
    REQUIRE(w->finish().ok());
    REQUIRE(w->bytes_written() == out.size());
    return out;
}

struct ReadOutcome {
    std::optional<Error> error;
    std::optional<Header> header;
    std::vector<Chunk> chunks;
};

// Feeds `stream` in pieces of `piece` bytes, then ends the input.
ReadOutcome read_stream(std::span<const std::byte> stream, std::size_t piece = 1 << 20) {
    ReadOutcome out;
    Reader r(
        [&](const Header& h) -> Result<void> {
            out.header = h;
            return success();
        },
        [&](std::uint64_t index, std::span<const std::byte> data) -> Result<void> {
            out.chunks.push_back({index, Bytes(data.begin(), data.end())});
            return success();
        });
    for (std::size_t at = 0; at < stream.size(); at += piece) {
        if (auto ok = r.feed(stream.subspan(at, std::min(piece, stream.size() - at))); !ok) {
            out.error = ok.error();
            return out;
        }
    }
    if (auto ok = r.finish(); !ok) {
        out.error = ok.error();
    }
    return out;
}

void put_le(Bytes& b, std::size_t at, std::uint64_t v, int n) {
    for (int i = 0; i < n; ++i) {
        b[at + i] = static_cast<std::byte>((v >> (8 * i)) & 0xff);
    }
}

// Recomputes the trailer's digest, so that a test reaches the check it means to reach.
void reseal(Bytes& b) {
    Sha256 h;
    h.update(b.data(), b.size() - kTrailerBytes);
    const auto sum = h.digest();
    std::memcpy(b.data() + b.size() - kDigestBytes, sum.data(), sum.size());
}

std::string message_of(const ReadOutcome& o) {
    REQUIRE(o.error.has_value());
    return o.error->message();
}

}  // namespace

TEST_CASE("archive round trip, compressed and not, read in pieces of any size", "[archive]") {
    const bool compressed = GENERATE(false, true);
    // 4 KiB chunks, more than two writer frames (63 records each) when compressed.
    std::vector<std::uint64_t> indexes;
    for (std::uint64_t i = 0; i < 150; ++i) {
        indexes.push_back(i * 3 + (i % 2));
    }
    Header h = small_header(compressed, indexes.size(), 4096);
    h.origin_bytes = 1000ull * 4096 - 512;  // not a whole number of chunks
    const auto chunks = chunks_at(indexes, 4096);
    const auto stream = write_stream(h, chunks);
    for (std::size_t piece : {std::size_t{1}, std::size_t{7}, std::size_t{4096}, stream.size()}) {
        CAPTURE(compressed, piece);
        const auto got = read_stream(stream, piece);
        REQUIRE_FALSE(got.error.has_value());
        REQUIRE(got.header.has_value());
        CHECK(got.header->compressed == compressed);
        CHECK(got.header->origin_bytes == h.origin_bytes);
        CHECK(got.header->origin_chunks() == 1000);
        REQUIRE(got.chunks.size() == chunks.size());
        for (std::size_t i = 0; i < chunks.size(); ++i) {
            CHECK(got.chunks[i].index == chunks[i].index);
            CHECK(got.chunks[i].data == chunks[i].data);
        }
    }
    if (compressed) {
        // The patterned chunks compress; the frames' overhead does not undo it.
        CHECK(stream.size() < chunks.size() * 4096 / 2);
    }
}

TEST_CASE("archive header: every field at its documented offset, read back", "[archive]") {
    Header h = small_header(false, 1, 4096);
    h.origin_bytes = 1 << 20;
    const auto stream = write_stream(h, chunks_at({3}, 4096));
    // docs/archive.md's example: exactly 72 + name + one record + 40 bytes.
    REQUIRE(stream.size() == 72 + 8 + 4104 + 40);
    const auto u8 = [&](std::size_t at) { return std::to_integer<unsigned>(stream[at]); };
    const unsigned magic[] = {0x89, 'W', 'R', 'E', 'N', 'N', '\r', '\n'};
    for (std::size_t i = 0; i < 8; ++i) {
        CHECK(u8(i) == magic[i]);
    }
    CHECK(u8(8) == 2);      // version
    CHECK(u8(12) == 0);     // flags: not compressed
    CHECK(u8(17) == 0x10);  // chunk_bytes 4096
    CHECK(u8(20) == 8);     // name_bytes
    CHECK(u8(26) == 0x10);  // origin_bytes 1 MiB
    CHECK(u8(32) == 1);     // chunk_count
    CHECK(u8(40) == 0xa0);  // template_digest
    CHECK(u8(71) == 0xa0 + 31);
    CHECK(std::memcmp(&stream[72], "base.img", 8) == 0);
    CHECK(u8(80) == 3);  // the record's index
    CHECK(std::memcmp(&stream[0x1058], "WRENNEND", 8) == 0);
    Sha256 sum;
    sum.update(stream.data(), 0x1058);
    const auto want = sum.digest();
    CHECK(std::memcmp(&stream[0x1060], want.data(), 32) == 0);

    const auto got = read_stream(stream);
    REQUIRE_FALSE(got.error.has_value());
    CHECK(got.header->version == 2);
    CHECK_FALSE(got.header->compressed);
    CHECK(got.header->chunk_bytes == 4096);
    CHECK(got.header->origin_bytes == 1 << 20);
    CHECK(got.header->chunk_count == 1);
    CHECK(got.header->template_digest == h.template_digest);
    CHECK(got.header->template_digest_name().substr(0, 23) == "blocks-sha256-4k:a0a1a2");

    // Version 1 names the whole image's SHA-256 in the same 32 bytes, and is still read.
    auto old = h;
    REQUIRE(set_template_digest(old, "sha256:" + std::string(64, 'c')).ok());
    CHECK(old.version == 1);
    const auto v1 = write_stream(old, chunks_at({3}, 4096));
    CHECK(std::to_integer<unsigned>(v1[8]) == 1);
    const auto got_v1 = read_stream(v1);
    REQUIRE_FALSE(got_v1.error.has_value());
    CHECK(got_v1.header->template_digest_name() == "sha256:" + std::string(64, 'c'));
    CHECK_FALSE(set_template_digest(old, "md5:" + std::string(64, 'c')).ok());
    CHECK(got.header->template_name == "base.img");

    auto compressed = h;
    compressed.compressed = true;
    const auto zs = write_stream(compressed, chunks_at({3}, 4096));
    CHECK(std::to_integer<unsigned>(zs[12]) == 1);
    CHECK(read_stream(zs).header->compressed);
}

TEST_CASE("archive overhead: uncompressed size is the changed bytes plus 8 per chunk",
          "[archive]") {
    std::vector<std::uint64_t> indexes;
    for (std::uint64_t i = 0; i < 1000; ++i) {
        indexes.push_back(i * 2);
    }
    Header h = small_header(false, indexes.size(), 4096);
    h.origin_bytes = 4096ull * 4096;
    const auto stream = write_stream(h, chunks_at(indexes, 4096));
    CHECK(stream.size() == 72 + 8 + 1000 * (8 + 4096) + 40);
    CHECK(static_cast<double>(stream.size()) / (1000.0 * 4096) <= 1.05);
}

TEST_CASE("archive: an empty sandbox is a header and a trailer", "[archive]") {
    for (bool compressed : {false, true}) {
        const auto stream = write_stream(small_header(compressed, 0), {});
        CHECK(stream.size() == 72 + 8 + 40);
        const auto got = read_stream(stream);
        CHECK_FALSE(got.error.has_value());
        CHECK(got.chunks.empty());
    }
}

TEST_CASE("archive: truncation at every byte offset is refused, naming where", "[archive]") {
    const bool compressed = GENERATE(false, true);
    const auto stream = write_stream(small_header(compressed, 3), chunks_at({1, 5, 63}, 512));
    for (std::size_t cut = 0; cut < stream.size(); ++cut) {
        CAPTURE(compressed, cut);
        const auto got = read_stream(std::span(stream).first(cut), 5);
        REQUIRE(got.error.has_value());
        CHECK(got.error->code() == EBADMSG);
        const auto msg = got.error->message();
        CHECK(msg.find("byte " + std::to_string(cut)) != std::string::npos);
        CHECK((msg.find("stream ended inside") != std::string::npos ||
               msg.find("stream is empty") != std::string::npos));
    }
}

TEST_CASE("archive: a flipped bit anywhere is refused", "[archive]") {
    const bool compressed = GENERATE(false, true);
    const auto stream = write_stream(small_header(compressed, 2), chunks_at({2, 40}, 512));
    for (std::size_t at = 0; at < stream.size(); ++at) {
        for (int bit = 0; bit < 8; ++bit) {
            auto bad = stream;
            bad[at] ^= static_cast<std::byte>(1 << bit);
            CAPTURE(compressed, at, bit);
            const auto got = read_stream(bad, 64);
            REQUIRE(got.error.has_value());
            CHECK(got.error->code() == EBADMSG);
            CHECK(got.error->message().find("read archive at byte ") == 0);
        }
    }
}

TEST_CASE("archive: header fields out of range are refused at their offset", "[archive]") {
    const auto good = write_stream(small_header(false, 1), chunks_at({4}, 512));
    struct Case {
        std::size_t at;
        std::uint64_t value;
        int bytes;
        const char* says;
    };
    const Case cases[] = {
        {0, 0x41, 1, "byte 0: bad message (not a wrenn sandbox archive"},
        {8, 3, 4, "byte 8: bad message (format version 3, this reader knows versions 1 and 2"},
        {12, 4, 4, "byte 12: bad message (flags 4 has unknown bits set"},
        {16, 4000, 4, "byte 16: bad message (chunk size 4000, expected a power of two"},
        {16, 256, 4, "byte 16: bad message (chunk size 256"},
        {20, 0, 4, "byte 20: bad message (template name size 0"},
        {20, 256, 4, "byte 20: bad message (template name size 256"},
        {24, 0, 8, "byte 24: bad message (origin size 0"},
        {24, 1000, 8, "byte 24: bad message (origin size 1000"},
        {32, 65, 8, "byte 32: bad message (chunk count 65, more than the origin's 64 chunks"},
        {74, '/', 1, "byte 74: bad message (template name holds a '/' or NUL"},
        // A newline would forge a log line; 0xff would make the 409's JSON invalid UTF-8.
        {74, '\n', 1, "byte 72: bad message (template name is not UTF-8 text without control"},
        {74, 0xff, 1, "byte 72: bad message (template name is not UTF-8 text without control"},
    };
    for (const auto& c : cases) {
        CAPTURE(c.at, c.value);
        auto bad = good;
        put_le(bad, c.at, c.value, c.bytes);
        reseal(bad);
        CHECK_THAT(message_of(read_stream(bad)), Catch::Contains(c.says));
    }
}

TEST_CASE("archive: a wrong digest is refused, naming both digests", "[archive]") {
    auto stream = write_stream(small_header(true, 1), chunks_at({4}, 512));
    stream.back() ^= std::byte{0x80};
    const auto msg = message_of(read_stream(stream));
    CHECK_THAT(msg, Catch::Contains("byte " + std::to_string(stream.size() - 32) +
                                    ": bad message (SHA-256 "));
    CHECK_THAT(msg, Catch::Contains("the archive was changed or damaged"));
}

TEST_CASE("archive: chunks out of order or past the origin are refused", "[archive]") {
    const auto good = write_stream(small_header(false, 2), chunks_at({4, 9}, 512));
    const std::size_t second = 80 + 520;  // the second record's index
    auto same = good;
    put_le(same, second, 4, 8);
    reseal(same);
    CHECK_THAT(message_of(read_stream(same)),
               Catch::Contains("byte 600: bad message (chunk 4 is not after chunk 4"));
    auto back = good;
    put_le(back, second, 1, 8);
    reseal(back);
    CHECK_THAT(message_of(read_stream(back)), Catch::Contains("chunk 1 is not after chunk 4"));
    auto past = good;
    put_le(past, second, 64, 8);
    reseal(past);
    CHECK_THAT(message_of(read_stream(past)),
               Catch::Contains("byte 600: bad message (chunk 64 is past the origin's 64 chunks"));
}

TEST_CASE("archive: bytes after the trailer are refused", "[archive]") {
    auto stream = write_stream(small_header(true, 1), chunks_at({4}, 512));
    const auto end = stream.size();
    stream.push_back(std::byte{0});
    CHECK_THAT(message_of(read_stream(stream)),
               Catch::Contains("byte " + std::to_string(end) +
                               ": bad message (data after the end of the archive"));
}

TEST_CASE("archive: frame heads that break the rules are refused", "[archive]") {
    const auto good = write_stream(small_header(true, 2), chunks_at({4, 9}, 512));
    const std::size_t head = 80;  // the first frame's head
    auto odd = good;
    put_le(odd, head, 1000, 4);  // not a multiple of 520
    reseal(odd);
    CHECK_THAT(message_of(read_stream(odd)),
               Catch::Contains("byte 80: bad message (frame of 1000 raw bytes"));
    auto more = good;
    put_le(more, head, 3 * 520, 4);
    reseal(more);
    CHECK_THAT(message_of(read_stream(more)),
               Catch::Contains("frame of 3 records, but only 2 of the header's chunk count"));
    auto big = good;
    put_le(big, head + 4, 0xffffffff, 4);
    reseal(big);
    CHECK_THAT(message_of(read_stream(big)), Catch::Contains("byte 84: bad message (zstd frame"));
}

TEST_CASE("archive reader: a callback's error stops it and is returned as is", "[archive]") {
    const auto stream = write_stream(small_header(false, 2), chunks_at({4, 9}, 512));
    int calls = 0;
    Reader r([](const Header&) -> Result<void> { return success(); },
             [&](std::uint64_t, std::span<const std::byte>) -> Result<void> {
                 ++calls;
                 return Error("write chunk", ENOSPC);
             });
    auto ok = r.feed(stream);
    REQUIRE_FALSE(ok.ok());
    CHECK(ok.error().code() == ENOSPC);
    CHECK(calls == 1);
    CHECK(r.finish().error().code() == ENOSPC);

    Reader refuse(
        [](const Header& h) -> Result<void> {
            return Error("import", EEXIST, "template " + h.template_digest_name());
        },
        [](std::uint64_t, std::span<const std::byte>) -> Result<void> { return success(); });
    CHECK(refuse.feed(stream).error().code() == EEXIST);
}

TEST_CASE("archive writer refuses what would make a bad stream", "[archive]") {
    Bytes out;
    auto sink = [&](std::span<const std::byte> b) -> Result<void> {
        out.insert(out.end(), b.begin(), b.end());
        return success();
    };
    auto bad_header = small_header(false, 1);
    bad_header.template_name = "a/b";
    CHECK_THAT(Writer::create(bad_header, sink).error().message(),
               Catch::Contains("template name must be 1 to 255 bytes"));
    bad_header.template_name = "a\nb";
    CHECK_THAT(Writer::create(bad_header, sink).error().message(),
               Catch::Contains("without '/' or control characters"));
    bad_header = small_header(false, 65);
    CHECK(Writer::create(bad_header, sink).error().code() == EINVAL);

    auto w = Writer::create(small_header(false, 2), sink);
    REQUIRE(w.ok());
    CHECK(w->add_chunk(3, pattern(100, 1)).error().code() == EINVAL);  // wrong size
    auto w2 = Writer::create(small_header(false, 2), sink);
    REQUIRE(w2->add_chunk(5, pattern(512, 1)).ok());
    CHECK_THAT(w2->add_chunk(5, pattern(512, 1)).error().message(),
               Catch::Contains("not after the previous chunk 5"));
    CHECK_THAT(w2->finish().error().message(), Catch::Contains("earlier error"));
    auto w3 = Writer::create(small_header(true, 2), sink);
    REQUIRE(w3->add_chunk(5, pattern(512, 1)).ok());
    CHECK_THAT(w3->finish().error().message(),
               Catch::Contains("1 chunks written, the header promised 2"));
    auto w4 = Writer::create(small_header(true, 1), sink);
    CHECK_THAT(w4->add_chunk(64, pattern(512, 1)).error().message(),
               Catch::Contains("past the origin's 64 chunks"));

    auto failing = Writer::create(small_header(false, 1), [](std::span<const std::byte>) {
        return Result<void>(Error("write /x", ENOSPC));
    });
    REQUIRE_FALSE(failing.ok());
    CHECK(failing.error().code() == ENOSPC);
}

TEST_CASE("archive: parse_sha256_hex", "[archive]") {
    const std::string hex = sha256_hex("abc");
    auto d = parse_sha256_hex(hex);
    REQUIRE(d.ok());
    CHECK(to_hex(d->data(), d->size()) == hex);
    CHECK_FALSE(parse_sha256_hex("abc").ok());
    CHECK_FALSE(parse_sha256_hex(std::string(63, 'a') + "g").ok());
}

// Archives as earlier agents wrote them, kept as files: every version an agent ever wrote must
// stay readable (a paused sandbox exported before an upgrade is imported after it). Each holds
// chunks 3 and 9 of pattern() over a 64-chunk origin of 4 KiB chunks, template "base.img".
namespace {

struct Fixture {
    const char* file;
    std::uint32_t version;
    bool compressed;
    bool image;
};
constexpr Fixture kFixtures[] = {
    {"archive-v1.wrenn", 1, false, false},        // whole-image sha256 of "c"*64
    {"archive-v2-zstd.wrenn", 2, true, false},    // blocks-sha256-4k a0a1..., zstd frames
    {"template-image-v2.wrenn", 2, false, true},  // a template image stream (flag bit 1)
};
const std::string kFixtureDir = std::string(WRENN_SOURCE_DIR) + "/tests/unit/fixtures/";

Header fixture_header(const Fixture& f) {
    Header h = small_header(f.compressed, 2, 4096);
    h.image = f.image;
    if (f.version == 1) {
        REQUIRE(set_template_digest(h, "sha256:" + std::string(64, 'c')).ok());
    }
    return h;
}

}  // namespace

TEST_CASE("archive: the files of every earlier version are read", "[archive]") {
    for (const auto& f : kFixtures) {
        CAPTURE(f.file);
        std::ifstream in(kFixtureDir + f.file, std::ios::binary);
        REQUIRE(in.good());
        const std::string text((std::istreambuf_iterator<char>(in)), {});
        const auto* first = reinterpret_cast<const std::byte*>(text.data());
        const auto got = read_stream(std::span(first, text.size()));
        REQUIRE_FALSE(got.error.has_value());
        CHECK(got.header->version == f.version);
        CHECK(got.header->compressed == f.compressed);
        CHECK(got.header->image == f.image);
        CHECK(got.header->template_name == "base.img");
        CHECK(got.header->template_digest_name() == fixture_header(f).template_digest_name());
        REQUIRE(got.chunks.size() == 2);
        const auto want = chunks_at({3, 9}, 4096);
        for (std::size_t i = 0; i < 2; ++i) {
            CHECK(got.chunks[i].index == want[i].index);
            CHECK(got.chunks[i].data == want[i].data);
        }
    }
}

// Writes the files above; run by hand, once, when a new version is added (the files of the
// versions before it are never written again):
//   WRENN_WRITE_FIXTURES=1 build/tests/unit_tests "[.write-fixtures]"
TEST_CASE("archive: write the fixture files", "[.write-fixtures]") {
    REQUIRE(std::getenv("WRENN_WRITE_FIXTURES") != nullptr);
    for (const auto& f : kFixtures) {
        if (std::filesystem::exists(kFixtureDir + f.file)) {
            continue;
        }
        const auto bytes = write_stream(fixture_header(f), chunks_at({3, 9}, 4096));
        std::ofstream out(kFixtureDir + f.file, std::ios::binary);
        out.write(reinterpret_cast<const char*>(bytes.data()),
                  static_cast<std::streamsize>(bytes.size()));
        REQUIRE(out.good());
    }
}
