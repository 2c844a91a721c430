#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "flatten/cli.hpp"
#include "flatten/flatten.hpp"
#include "flatten/image_copy.hpp"
#include "unit/flatten_cow_writer.hpp"

using namespace wrenn::flatten;
using namespace wrenn::flatten::testing;

namespace {

constexpr std::uint64_t kChunk = 4096;

// A fresh directory under /tmp, removed with its files at the end.
struct TempDir {
    std::string path;
    TempDir() {
        char tmpl[] = "/tmp/wrenn-flatten-XXXXXX";
        REQUIRE(::mkdtemp(tmpl) != nullptr);
        path = tmpl;
    }
    ~TempDir() {
        for (const auto& name : entries()) {
            ::unlink((path + "/" + name).c_str());
        }
        ::rmdir(path.c_str());
    }
    std::string operator/(const std::string& name) const { return path + "/" + name; }
    std::vector<std::string> entries() const {
        std::vector<std::string> out;
        if (DIR* d = ::opendir(path.c_str())) {
            while (dirent* e = ::readdir(d)) {
                std::string n = e->d_name;
                if (n != "." && n != "..") {
                    out.push_back(n);
                }
            }
            ::closedir(d);
        }
        return out;
    }
};

void write_file(const std::string& path, const std::vector<std::byte>& bytes) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
    REQUIRE(f.good());
}

std::vector<std::byte> read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::vector<char> raw((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::vector<std::byte> out(raw.size());
    std::memcpy(out.data(), raw.data(), raw.size());
    return out;
}

struct stat stat_of(const std::string& path) {
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    return st;
}

// An origin of 40 chunks + 1000 bytes with data in chunks 0-2, 20 and the partial last chunk;
// the rest are holes (written sparsely with pwrite at offsets).
struct Fixture {
    TempDir dir;
    static constexpr std::uint64_t size = 40 * kChunk + 1000;
    std::vector<std::byte> expected = std::vector<std::byte>(size);
    std::string origin = dir / "origin.img";
    std::string cow = dir / "cow";
    std::string out = dir / "out.img";

    Fixture() {
        int fd = ::open(origin.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
        REQUIRE(fd >= 0);
        auto put = [&](std::uint64_t off, std::uint64_t len, int seed) {
            for (std::uint64_t i = 0; i < len; ++i) {
                expected[off + i] = static_cast<std::byte>(seed + i * 13 + (i >> 9));
            }
            REQUIRE(::pwrite(fd, expected.data() + off, len, static_cast<off_t>(off)) ==
                    static_cast<ssize_t>(len));
        };
        put(0, 3 * kChunk, 1);
        put(20 * kChunk, kChunk, 2);
        put(40 * kChunk, 1000, 3);
        REQUIRE(::ftruncate(fd, static_cast<off_t>(size)) == 0);
        ::close(fd);

        // Exceptions: chunk 1 (data), 10 (hole), 30-32 (a run), 40 (partial last chunk).
        auto ex = allocate_like_kernel({1, 10, 30, 31, 32, 40});
        auto bytes = make_cow(ex, 16);
        std::uint8_t seed = 100;
        for (const auto& e : ex) {
            fill_chunk(bytes, e.new_chunk, seed);
            // The snapshot saw the origin in whole sectors: of the partial last chunk, the
            // CoW's bytes count up to the last whole sector; the 488 after it stay the origin's.
            const std::uint64_t dst = e.old_chunk * kChunk;
            const std::uint64_t len = std::min(kChunk, size / 512 * 512 - dst);
            std::memcpy(expected.data() + dst, bytes.data() + e.new_chunk * kChunk, len);
            seed += 17;
        }
        write_file(cow, bytes);
    }
};

}  // namespace

TEST_CASE("flatten writes the origin with the CoW's chunks over it, sparse", "[flatten]") {
    Fixture f;
    auto stats = flatten(f.origin, f.cow, f.out);
    REQUIRE(stats.ok());
    CHECK(stats->size_bytes == Fixture::size);
    CHECK(stats->chunks_applied == 6);
    INFO("copied by " << to_string(stats->method));
    CHECK(read_file(f.out) == f.expected);
    // Data: chunks 0-2, 20, 40 from the origin, 10 and 30-32 from the CoW: 10 chunks of 41.
    const auto out = stat_of(f.out);
    CHECK(out.st_size == static_cast<off_t>(Fixture::size));
    CHECK(static_cast<std::uint64_t>(out.st_blocks) * 512 <= 12 * kChunk);
    CHECK((out.st_mode & 0777) == 0444);  // a template: nobody rewrites it in place
    CHECK(f.dir.entries().size() == 3);   // origin, cow, out: no temp file left
}

TEST_CASE("every copy method gives the same sparse bytes", "[flatten]") {
    Fixture f;
    const CopyMethod method = GENERATE(CopyMethod::CopyFileRange, CopyMethod::ReadWrite);
    INFO(to_string(method));
    auto origin = open_read_only(f.origin);
    REQUIRE(origin.ok());
    auto out = PendingOutput::create(f.out);
    REQUIRE(out.ok());
    auto used = copy_image(*origin, out->fd(), method);
    REQUIRE(used.ok());
    CHECK(*used == method);
    auto cow = open_read_only(f.cow);
    REQUIRE(cow.ok());
    auto store = read_exception_store_file(f.cow, origin->size);
    REQUIRE(store.ok());
    auto applied =
        apply_exceptions(cow->fd.get(), out->fd(), store->exceptions, kChunk, origin->size);
    REQUIRE(applied.ok());
    CHECK(*applied == 6);
    REQUIRE(out->commit().ok());
    CHECK(read_file(f.out) == f.expected);
    CHECK(static_cast<std::uint64_t>(stat_of(f.out).st_blocks) * 512 <= 12 * kChunk);
}

TEST_CASE("the read/write copy leaves zero blocks of data as holes", "[flatten]") {
    TempDir dir;
    std::vector<std::byte> bytes(64 * kChunk);  // written out in full: all data, all zero
    bytes[5 * kChunk + 7] = std::byte{1};
    write_file(dir / "origin", bytes);
    auto origin = open_read_only(dir / "origin");
    REQUIRE(origin.ok());
    auto out = PendingOutput::create(dir / "out");
    REQUIRE(out.ok());
    REQUIRE(copy_image(*origin, out->fd(), CopyMethod::ReadWrite).ok());
    REQUIRE(out->commit().ok());
    CHECK(read_file(dir / "out") == bytes);
    CHECK(static_cast<std::uint64_t>(stat_of(dir / "out").st_blocks) * 512 <= 2 * kChunk);
}

TEST_CASE("an empty CoW flattens to a copy of the origin", "[flatten]") {
    Fixture f;
    write_file(f.cow, std::vector<std::byte>(4 * kChunk));
    auto stats = flatten(f.origin, f.cow, f.out);
    REQUIRE(stats.ok());
    CHECK(stats->chunks_applied == 0);
    CHECK(read_file(f.out) == read_file(f.origin));
}

TEST_CASE("flatten never replaces an existing output", "[flatten]") {
    Fixture f;
    write_file(f.out, {std::byte{'k'}, std::byte{'e'}, std::byte{'e'}, std::byte{'p'}});
    auto stats = flatten(f.origin, f.cow, f.out);
    REQUIRE_FALSE(stats.ok());
    CHECK(stats.error().code() == EEXIST);
    CHECK(read_file(f.out).size() == 4);
    CHECK(f.dir.entries().size() == 3);
}

TEST_CASE("a bad CoW leaves no output and no temp file", "[flatten]") {
    Fixture f;
    auto bytes = read_file(f.cow);
    SECTION("bad magic") {
        bytes[0] = std::byte{0x42};
    }
    SECTION("invalidated") {
        bytes[4] = std::byte{0};
    }
    SECTION("truncated") {
        bytes.resize(kChunk + 10);
    }
    write_file(f.cow, bytes);
    auto stats = flatten(f.origin, f.cow, f.out);
    REQUIRE_FALSE(stats.ok());
    INFO(stats.error().message());
    CHECK(stats.error().message().find(f.cow) != std::string::npos);
    CHECK(f.dir.entries().size() == 2);
}

TEST_CASE("an unfinished output is removed when dropped", "[flatten]") {
    TempDir dir;
    {
        auto out = PendingOutput::create(dir / "out");
        REQUIRE(out.ok());
        CHECK(dir.entries().size() == 1);
        CHECK(out->temp_path().rfind(dir / "out.tmp-", 0) == 0);
    }
    CHECK(dir.entries().empty());
}

TEST_CASE("an origin that is neither file nor block device is refused", "[flatten]") {
    auto r = open_read_only("/tmp");
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code() == EINVAL);
}

TEST_CASE("the flatten command prints one line and exits 1 on error", "[flatten]") {
    Fixture f;
    std::ostringstream out;
    std::ostringstream err;
    CHECK(run_cli({"flatten", "--origin", f.origin, "--cow", f.cow, "--out", f.out}, out, err) ==
          0);
    CHECK(out.str().find("6 chunks applied") != std::string::npos);
    CHECK(err.str().empty());

    std::ostringstream out2;
    std::ostringstream err2;
    CHECK(run_cli({"--origin", f.origin, "--cow", f.cow, "--out", f.out}, out2, err2) == 1);
    CHECK(err2.str().find("already exists") != std::string::npos);

    std::ostringstream out3;
    std::ostringstream err3;
    CHECK(run_cli({"--origin", f.origin}, out3, err3) == 2);
    CHECK(err3.str().find("--cow") != std::string::npos);
}
