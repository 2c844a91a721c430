// Template images moving as bodies (agent/templates): an image sent as a template image stream
// and received back, or received raw or zstd-compressed, is the same bytes with the digest of
// the definition, keeps its zeros as holes, and every malformed body is refused with EBADMSG.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include <catch2/catch.hpp>
#include <random>
#include <string>

#include "agent/state/template_blocks.hpp"
#include "agent/templates/image_receiver.hpp"
#include "agent/templates/image_sender.hpp"
#include "agent_fixture.hpp"
#include "archive/format.hpp"
#include "common/file.hpp"
#include "common/unique_fd.hpp"

using namespace wrenn;
using namespace wrenn::agent;
using namespace wrenn::agent::testing;
using Bytes = std::vector<std::byte>;

namespace {

constexpr std::uint64_t kMiB = 1 << 20;

std::string noise(std::size_t n, unsigned seed) {
    std::mt19937 rng(seed);
    std::string out(n, '\0');
    for (auto& c : out) {
        c = static_cast<char>(rng() & 0xff);
    }
    return out;
}

// A sparse image of `size` bytes with these pieces written, and its bytes.
struct Image {
    std::string path;
    std::string bytes;
};
Image make_image(const std::string& path, std::uint64_t size,
                 const std::vector<std::pair<std::uint64_t, std::string>>& pieces) {
    write_file(path, size);
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
    REQUIRE(fd);
    std::string bytes(size, '\0');
    for (const auto& [offset, piece] : pieces) {
        REQUIRE(::pwrite(fd.get(), piece.data(), piece.size(), static_cast<off_t>(offset)) ==
                static_cast<ssize_t>(piece.size()));
        bytes.replace(offset, piece.size(), piece);
    }
    REQUIRE(::fchmod(fd.get(), 0444) == 0);
    return {path, bytes};
}

Bytes as_bytes(const std::string& s) {
    const auto* p = reinterpret_cast<const std::byte*>(s.data());
    return Bytes(p, p + s.size());
}

// What a receiver made of `body` fed in pieces of `piece` bytes.
struct Received {
    Result<ReceivedImage> result = Error("not run", 0);
    std::string bytes;            // the file's content
    std::uint64_t allocated = 0;  // its blocks
    ImageForm form = ImageForm::Detect;
};
Received receive(const std::string& out, ImageForm form, const Bytes& body,
                 std::size_t piece = 65536, std::uint64_t max_bytes = UINT64_MAX,
                 ImageReceiver::Hooks hooks = {}) {
    UniqueFd fd(::open(out.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    REQUIRE(fd);
    ImageReceiver receiver(form, fd.get(), -1, max_bytes, std::move(hooks));
    Received got;
    for (std::size_t at = 0; at < body.size(); at += piece) {
        const std::size_t n = std::min(piece, body.size() - at);
        if (auto fed = receiver.feed(std::span(body.data() + at, n)); !fed) {
            got.result = std::move(fed).error();
            return got;
        }
    }
    got.result = receiver.finish();
    got.form = receiver.form();
    auto text = read_file(out, 256 << 20);
    REQUIRE(text.ok());
    got.bytes = *text;
    struct stat st {};
    REQUIRE(::fstat(fd.get(), &st) == 0);
    got.allocated = static_cast<std::uint64_t>(st.st_blocks) * 512;
    return got;
}

Bytes sent_stream(const Image& image, const std::string& digest, bool compress) {
    auto opened = open_template(image.path, ::geteuid());
    REQUIRE(opened.ok());
    Bytes stream;
    auto sent = send_image(image.path, *opened, digest, "base.img", compress,
                           [&](std::span<const std::byte> bytes) -> Result<void> {
                               stream.insert(stream.end(), bytes.begin(), bytes.end());
                               return {};
                           });
    REQUIRE(sent.ok());
    CHECK(sent->stream_bytes == stream.size());
    return stream;
}

Bytes zstd_of(const std::string& bytes) {
    Bytes out(ZSTD_compressBound(bytes.size()));
    const std::size_t n = ZSTD_compress(out.data(), out.size(), bytes.data(), bytes.size(), 3);
    REQUIRE(ZSTD_isError(n) == 0);
    out.resize(n);
    return out;
}

}  // namespace

TEST_CASE("an image sent as a stream and received back is the same bytes, digest and holes",
          "[templates]") {
    TempDir tmp;
    // 3 MiB and a half leaf: data in the first group, a run across a group boundary, a lone
    // leaf deep in a hole, zeros written as data, and a short last leaf.
    const std::uint64_t size = 3 * kMiB + 2048;
    auto image = make_image(tmp.path() + "/base.img", size,
                            {{0, noise(10000, 1)},
                             {512 * 1024 - 4096, noise(3 * 4096, 2)},
                             {2 * kMiB + 40960, noise(4096, 3)},
                             {2 * kMiB + 81920, std::string(65536, '\0')},
                             {size - 1000, noise(1000, 4)}});
    const std::string digest = expected_blocks_digest(image.bytes);
    const bool compress = GENERATE(true, false);
    const Bytes stream = sent_stream(image, digest, compress);
    CHECK(stream.size() < (compress ? 200 * 1024 : 200 * 1024 + 65536 + 4096));

    const auto form = GENERATE(ImageForm::Stream, ImageForm::Detect);
    const std::size_t piece = GENERATE(1, 4093, 1 << 20);
    if (piece == 1 && compress == false) {
        return;  // byte by byte once is enough
    }
    auto got = receive(tmp.path() + "/out.img", form, stream, piece);
    REQUIRE(got.result.ok());
    CHECK(got.form == ImageForm::Stream);
    CHECK(got.result->size_bytes == size);
    CHECK(got.result->digest == digest);
    CHECK(got.bytes == image.bytes);
    // The zeros written as data in the source are holes here: only the seven non-zero leaves
    // and the short last one are written.
    CHECK(got.result->data_bytes == 7 * 4096 + 2048);
    CHECK(got.allocated <= 10 * 4096);
}

TEST_CASE("a raw or zstd image is received with its digest, its zeros left as holes",
          "[templates]") {
    TempDir tmp;
    // 2 MiB fills zstd's output buffer exactly at the frame's end; 512 more does not.
    const std::uint64_t size = 2 * kMiB + GENERATE(0, 512);
    auto image = make_image(
        tmp.path() + "/base.img", size,
        {{4096, noise(8192, 5)}, {kMiB + 100, noise(300, 6)}, {size - 512, noise(512, 7)}});
    const std::uint64_t data = size % 4096 == 0 ? 4 * 4096 : 3 * 4096 + 512;
    const std::string digest = expected_blocks_digest(image.bytes);
    const bool zstd = GENERATE(false, true);
    const bool detect = GENERATE(false, true);
    const Bytes body = zstd ? zstd_of(image.bytes) : as_bytes(image.bytes);
    const ImageForm form = detect ? ImageForm::Detect : zstd ? ImageForm::Zstd : ImageForm::Raw;
    const std::size_t piece = GENERATE(10007, 1 << 20);
    auto got = receive(tmp.path() + "/out.img", form, body, piece);
    REQUIRE(got.result.ok());
    CHECK(got.form == (zstd ? ImageForm::Zstd : ImageForm::Raw));
    CHECK(got.result->digest == digest);
    CHECK(got.bytes == image.bytes);
    CHECK(got.result->data_bytes == data);
    CHECK(got.allocated <= 6 * 4096);
}

TEST_CASE("BlockHasher's list equals hash_blocks' over the same image, leaf pages too",
          "[templates]") {
    TempDir tmp;
    const std::uint64_t size = 5 * kMiB;
    auto image = make_image(tmp.path() + "/base.img", size,
                            {{0, noise(4096, 8)}, {3 * kMiB + 8192, noise(70000, 9)}});
    auto opened = open_template(image.path, ::geteuid());
    REQUIRE(opened.ok());
    auto read = hash_blocks(image.path, *opened, -1);
    REQUIRE(read.ok());
    BlockHasher hasher;
    for (std::uint64_t leaf = 0; leaf * 4096 < size; ++leaf) {
        const std::string_view bytes(image.bytes.data() + leaf * 4096, 4096);
        if (bytes.find_first_not_of('\0') != std::string_view::npos) {
            REQUIRE(hasher.add(leaf, std::as_bytes(std::span(bytes.data(), bytes.size()))).ok());
        }
    }
    auto list = hasher.finish(size);
    REQUIRE(list.ok());
    CHECK(list->digest() == read->digest());
    CHECK(list->digest() == expected_blocks_digest(image.bytes));
    CHECK(hasher.add(0, as_bytes("x")).error().code() == EINVAL);  // not after the last leaf
}

TEST_CASE("malformed image bodies are refused, and over the limit is EFBIG", "[templates]") {
    TempDir tmp;
    const std::uint64_t size = kMiB;
    auto image = make_image(tmp.path() + "/base.img", size, {{8192, noise(20000, 10)}});
    const std::string digest = expected_blocks_digest(image.bytes);
    const Bytes stream = sent_stream(image, digest, true);
    const std::string out = tmp.path() + "/out.img";

    SECTION("a stream cut short") {
        const Bytes half(stream.begin(), stream.begin() + static_cast<long>(stream.size() / 2));
        CHECK(receive(out, ImageForm::Stream, half).result.error().code() == EBADMSG);
    }
    SECTION("a stream whose header names another digest") {
        auto other = make_image(tmp.path() + "/other.img", size, {{8192, noise(20000, 11)}});
        const Bytes lying = sent_stream(other, digest, false);  // other bytes, base's digest
        auto got = receive(out, ImageForm::Stream, lying);
        CHECK(got.result.error().code() == EBADMSG);
        CHECK_THAT(got.result.error().message(), Catch::Contains("content hashes to"));
    }
    SECTION("a sandbox archive is not a template image") {
        Bytes archive = stream;
        archive[12] = std::byte{1};  // flags: compressed, not image (the digest breaks too)
        auto got = receive(out, ImageForm::Stream, archive);
        CHECK(got.result.error().code() == EBADMSG);
        CHECK_THAT(got.result.error().message(), Catch::Contains("sandbox archive"));
    }
    SECTION("a zstd stream cut inside a frame") {
        Bytes z = zstd_of(image.bytes);
        z.resize(z.size() - 3);
        CHECK(receive(out, ImageForm::Zstd, z).result.error().code() == EBADMSG);
    }
    SECTION("a raw image that is not a multiple of 512 bytes") {
        const Bytes body = as_bytes(image.bytes.substr(0, 100000));
        auto got = receive(out, ImageForm::Raw, body);
        CHECK(got.result.error().code() == EBADMSG);
        CHECK_THAT(got.result.error().message(), Catch::Contains("multiple of 512"));
    }
    SECTION("an empty body") {
        CHECK(receive(out, ImageForm::Detect, {}).result.error().code() == EBADMSG);
    }
    SECTION("over max_bytes: raw as the bytes pass it, a stream from its header") {
        CHECK(receive(out, ImageForm::Raw, as_bytes(image.bytes), 65536, size - 4096)
                  .result.error()
                  .code() == EFBIG);
        CHECK(receive(out, ImageForm::Stream, stream, 65536, size - 4096).result.error().code() ==
              EFBIG);
    }
    SECTION("a refusal from a hook stops the receiver with it") {
        ImageReceiver::Hooks hooks;
        hooks.on_header = [](const archive::Header& h) -> Result<void> {
            CHECK(h.image);
            return Error("room", ENOSPC);
        };
        CHECK(receive(out, ImageForm::Stream, stream, 65536, UINT64_MAX, hooks)
                  .result.error()
                  .code() == ENOSPC);
    }
}
