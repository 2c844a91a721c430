#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "flatten/exception_store.hpp"
#include "unit/flatten_cow_writer.hpp"

using namespace wrenn::flatten;
using namespace wrenn::flatten::testing;

namespace {

constexpr std::uint64_t kChunk = 4096;
constexpr std::uint64_t kOrigin = 1000 * kChunk;

wrenn::Result<ExceptionStore> parse(const std::vector<std::byte>& cow,
                                    std::uint64_t origin = kOrigin) {
    return read_exception_store(MemoryReader{cow}, cow.size(), origin);
}

std::vector<std::uint64_t> range(std::uint64_t from, std::uint64_t count) {
    std::vector<std::uint64_t> v;
    for (std::uint64_t i = 0; i < count; ++i) {
        v.push_back(from + i);
    }
    return v;
}

void check_corrupt(const wrenn::Result<ExceptionStore>& r, const std::string& words) {
    REQUIRE_FALSE(r.ok());
    INFO(r.error().message());
    CHECK(r.error().code() == EUCLEAN);
    CHECK_FALSE(store_marked_invalid(r.error()));
    CHECK(r.error().message().find(words) != std::string::npos);
}

}  // namespace

TEST_CASE("metadata chunks sit at 1 + 257 * i with 4 KiB chunks", "[flatten]") {
    CHECK(area_location(kChunk, 0) == 1);
    CHECK(area_location(kChunk, 1) == 258);
    CHECK(area_location(kChunk, 2) == 515);
    CHECK(area_location(512, 1) == 1 + 33);
    CHECK(is_metadata_chunk(kChunk, 0));
    CHECK(is_metadata_chunk(kChunk, 1));
    CHECK(is_metadata_chunk(kChunk, 258));
    CHECK_FALSE(is_metadata_chunk(kChunk, 2));
    CHECK_FALSE(is_metadata_chunk(kChunk, 257));
}

TEST_CASE("a zero magic is an empty, never used store", "[flatten]") {
    std::vector<std::byte> cow(8 * kChunk);
    auto store = parse(cow);
    REQUIRE(store.ok());
    CHECK(store->empty);
    CHECK(store->valid);
    CHECK(store->exceptions.empty());
}

TEST_CASE("one area's exceptions are read and sorted by origin chunk", "[flatten]") {
    auto ex = allocate_like_kernel({7, 3, 900, 0});
    auto store = parse(make_cow(ex, 16));
    REQUIRE(store.ok());
    CHECK_FALSE(store->empty);
    CHECK(store->chunk_sectors == 8);
    CHECK(store->chunk_bytes() == kChunk);
    REQUIRE(store->exceptions.size() == 4);
    CHECK(store->exceptions[0].old_chunk == 0);
    CHECK(store->exceptions[0].new_chunk == 5);
    CHECK(store->exceptions[1].old_chunk == 3);
    CHECK(store->exceptions[1].new_chunk == 3);
    CHECK(store->exceptions[3].old_chunk == 900);
}

TEST_CASE("several areas are followed, reading only metadata chunks", "[flatten]") {
    const std::size_t count = GENERATE(256, 257, 600);
    auto ex = allocate_like_kernel(range(0, count));
    auto cow = make_cow(ex, ex.back().new_chunk + 300);
    std::vector<std::uint64_t> offsets;
    auto store = read_exception_store(MemoryReader{cow, &offsets}, cow.size(), kOrigin);
    REQUIRE(store.ok());
    REQUIRE(store->exceptions.size() == count);
    for (std::size_t i = 0; i < count; ++i) {
        CHECK(store->exceptions[i].old_chunk == i);
    }
    if (count > 256) {
        CHECK(store->exceptions[256].new_chunk == 259);
    }  // 258 is area 1's metadata chunk
    for (auto off : offsets) {
        INFO("read at " << off);
        CHECK(is_metadata_chunk(kChunk, off / kChunk));
    }
    // A full area means the next is read too (the kernel zeroed it): header + 2 or 3 areas.
    CHECK(offsets.size() == 1 + count / 256 + 1);
}

TEST_CASE("the origin's partial last chunk may be remapped, nothing past it", "[flatten]") {
    const std::uint64_t origin = 10 * kChunk + 100;  // 11 chunks, the last one partial
    auto ok = parse(make_cow(allocate_like_kernel({10}), 8), origin);
    REQUIRE(ok.ok());
    CHECK(ok->exceptions.at(0).old_chunk == 10);
    check_corrupt(parse(make_cow(allocate_like_kernel({11}), 8), origin), "past the origin");
}

TEST_CASE("a snapshot the kernel invalidated is refused with errno 0", "[flatten]") {
    CowHeader h;
    h.valid = 0;
    auto r = parse(make_cow(allocate_like_kernel({1}), 8, h));
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code() == 0);
    CHECK(store_marked_invalid(r.error()));
    CHECK(r.error().message().find("kernel invalidated") != std::string::npos);
}

TEST_CASE("a bad header is refused", "[flatten]") {
    CowHeader h;
    SECTION("bad magic") {
        h.magic = 0x12345678;
        check_corrupt(parse(make_cow({}, 8, h)), "bad magic 0x12345678");
    }
    SECTION("unknown version") {
        h.version = 2;
        check_corrupt(parse(make_cow({}, 8, h)), "version 2");
    }
    SECTION("chunk size not a power of two") {
        h.chunk_sectors = 12;
        check_corrupt(parse(make_cow({}, 8, h)), "chunk size 12");
    }
    SECTION("chunk size zero") {
        h.chunk_sectors = 0;
        check_corrupt(parse(make_cow({}, 8, h)), "chunk size 0");
    }
    SECTION("chunk size absurd") {
        auto cow = make_cow({}, 8);
        put_le(cow.data() + 12, 1u << 30, 4);  // 512 GiB chunks
        check_corrupt(parse(cow), "not a power of two between");
    }
}

TEST_CASE("exceptions pointing outside the origin or the CoW are refused", "[flatten]") {
    SECTION("old chunk past the origin") {
        check_corrupt(parse(make_cow({{1000, 2}}, 8)), "past the origin");
    }
    SECTION("new chunk past the CoW") {
        check_corrupt(parse(make_cow({{5, 8}}, 8)), "past the end of the file");
    }
    SECTION("new chunk on the first area's metadata chunk") {
        check_corrupt(parse(make_cow({{5, 1}}, 8)), "metadata chunk");
    }
    SECTION("new chunk on a later area's metadata chunk") {
        check_corrupt(parse(make_cow({{5, 258}}, 300)), "metadata chunk");
    }
    SECTION("the same origin chunk twice") {
        check_corrupt(parse(make_cow({{5, 2}, {5, 3}}, 8)), "origin chunk 5 has two");
    }
    SECTION("the same CoW chunk twice") {
        check_corrupt(parse(make_cow({{5, 2}, {6, 2}}, 8)), "CoW chunk 2 is the target of two");
    }
}

TEST_CASE("a truncated CoW is refused", "[flatten]") {
    auto cow = make_cow(allocate_like_kernel({1, 2}), 8);
    SECTION("inside the header") {
        cow.resize(10);
        check_corrupt(parse(cow), "truncated");
    }
    SECTION("inside the first metadata area") {
        cow.resize(kChunk + 100);
        check_corrupt(parse(cow), "truncated");
    }
    SECTION("before a data chunk") {
        cow.resize(3 * kChunk);
        check_corrupt(parse(cow), "past the end of the file");
    }
    SECTION("a full area whose successor is missing") {
        auto full = make_cow(allocate_like_kernel(range(0, 256)), 258);
        check_corrupt(parse(full), "metadata area 1");
    }
}

TEST_CASE("a read error is passed on with its errno", "[flatten]") {
    ReadAt failing = [](std::uint64_t, std::span<std::byte>) -> wrenn::Result<std::size_t> {
        return wrenn::Error("read /x/cow at byte 0", EIO);
    };
    auto r = read_exception_store(failing, 1 << 20, kOrigin);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code() == EIO);
    CHECK_FALSE(store_marked_invalid(r.error()));
}

TEST_CASE("read_exception_store_file reads a CoW file with pread", "[flatten]") {
    char path[] = "/tmp/wrenn-flatten-store-XXXXXX";
    int fd = ::mkstemp(path);
    REQUIRE(fd >= 0);
    ::close(fd);
    auto cow = make_cow(allocate_like_kernel({4, 2}), 8);
    {
        std::ofstream f(path, std::ios::binary);
        f.write(reinterpret_cast<const char*>(cow.data()),
                static_cast<std::streamsize>(cow.size()));
    }
    auto store = read_exception_store_file(path, kOrigin);
    auto missing = read_exception_store_file(std::string(path) + ".missing", kOrigin);
    std::remove(path);
    REQUIRE(store.ok());
    CHECK(store->exceptions.size() == 2);
    REQUIRE_FALSE(missing.ok());
    CHECK(missing.error().code() == ENOENT);
}
