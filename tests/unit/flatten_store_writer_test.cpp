#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>

#include "flatten/exception_store.hpp"
#include "flatten/exception_store_writer.hpp"
#include "flatten/image_copy.hpp"
#include "unit/flatten_cow_writer.hpp"

using namespace wrenn;
using namespace wrenn::flatten;
using namespace wrenn::flatten::testing;

namespace {

using Bytes = std::vector<std::byte>;

Bytes chunk_data(std::uint64_t old_chunk, std::uint64_t chunk_bytes) {
    Bytes b(chunk_bytes);
    for (std::uint64_t i = 0; i < chunk_bytes; ++i) {
        b[i] = static_cast<std::byte>(old_chunk * 31 + i * 7 + (i >> 8) + 1);
    }
    return b;
}

// A target of cow_bytes zeros that records where each write went.
struct MemoryTarget {
    Bytes bytes;
    std::vector<std::uint64_t> offsets;

    WriteAt writer() {
        return [this](std::uint64_t offset, std::span<const std::byte> b) -> Result<void> {
            REQUIRE(offset + b.size() <= bytes.size());
            offsets.push_back(offset);
            std::copy(b.begin(), b.end(), bytes.begin() + static_cast<std::ptrdiff_t>(offset));
            return success();
        };
    }
};

std::vector<std::uint64_t> every(std::uint64_t step, std::uint64_t count) {
    std::vector<std::uint64_t> v;
    for (std::uint64_t i = 0; i < count; ++i) {
        v.push_back(i * step);
    }
    return v;
}

}  // namespace

TEST_CASE("exception store writer: written, read back, the same chunks and bytes", "[flatten]") {
    const std::uint64_t chunk = GENERATE(512, 4096);
    const std::uint64_t per_area = chunk / 16;
    // Less than an area, exactly one and two areas (the next area must be empty and in the
    // file), and a partial third.
    const std::uint64_t count = GENERATE_COPY(
        values<std::uint64_t>({0, 1, per_area - 1, per_area, 2 * per_area, 2 * per_area + 5}));
    const auto olds = every(3, count);
    const std::uint64_t origin_bytes = (3 * count + 2) * chunk - 512;  // a partial last chunk
    const std::uint64_t cow_bytes = min_store_bytes(chunk, count);
    CAPTURE(chunk, count);

    MemoryTarget target{Bytes(cow_bytes), {}};
    auto w = ExceptionStoreWriter::create(target.writer(), chunk, origin_bytes, cow_bytes);
    REQUIRE(w.ok());
    for (auto old : olds) {
        REQUIRE(w->add_chunk(old, chunk_data(old, chunk)).ok());
    }
    REQUIRE(w->finish().ok());
    CHECK(w->chunks() == count);
    REQUIRE_FALSE(target.offsets.empty());
    CHECK(target.offsets.back() == 0);  // the header last

    auto store = read_exception_store(MemoryReader{target.bytes}, cow_bytes, origin_bytes);
    REQUIRE(store.ok());
    CHECK(store->chunk_bytes() == chunk);
    CHECK_FALSE(store->empty);
    REQUIRE(store->exceptions.size() == count);
    for (std::size_t i = 0; i < count; ++i) {
        CHECK(store->exceptions[i].old_chunk == olds[i]);
        const auto at = static_cast<std::ptrdiff_t>(store->exceptions[i].new_chunk * chunk);
        CHECK(Bytes(target.bytes.begin() + at, target.bytes.begin() + at + chunk) ==
              chunk_data(olds[i], chunk));
    }

    // Byte for byte the layout the kernel makes (dm-snap-persistent.c, as the test writer
    // lays it out) for these chunks written in this order.
    StoreHeader h;
    h.chunk_sectors = static_cast<std::uint32_t>(chunk / 512);
    auto want = make_cow(allocate_like_kernel(olds, chunk), cow_bytes / chunk, h);
    for (std::size_t i = 0; i < count; ++i) {
        const auto data = chunk_data(olds[i], chunk);
        std::copy(
            data.begin(), data.end(),
            want.begin() + static_cast<std::ptrdiff_t>(data_chunk_location(chunk, i) * chunk));
    }
    CHECK(target.bytes == want);
}

TEST_CASE("exception store writer: all-zero chunks are holes, still exceptions", "[flatten]") {
    const std::uint64_t cow_bytes = min_store_bytes(4096, 3);
    MemoryTarget target{Bytes(cow_bytes), {}};
    auto w = ExceptionStoreWriter::create(target.writer(), 4096, 100 * 4096, cow_bytes);
    REQUIRE(w->add_chunk(4, chunk_data(4, 4096)).ok());
    REQUIRE(w->add_chunk(5, Bytes(4096)).ok());
    REQUIRE(w->add_chunk(9, chunk_data(9, 4096)).ok());
    REQUIRE(w->finish().ok());
    // Data at CoW chunks 2 and 4; chunk 3 (origin chunk 5's zeros) never written.
    CHECK(std::count(target.offsets.begin(), target.offsets.end(), 3 * 4096) == 0);
    CHECK(std::count(target.offsets.begin(), target.offsets.end(), 2 * 4096) == 1);
    auto store = read_exception_store(MemoryReader{target.bytes}, cow_bytes, 100 * 4096);
    REQUIRE(store.ok());
    REQUIRE(store->exceptions.size() == 3);
    CHECK(store->exceptions[1].old_chunk == 5);
    CHECK(store->exceptions[1].new_chunk == 3);
}

TEST_CASE("exception store writer refuses what the kernel would not load", "[flatten]") {
    MemoryTarget target{Bytes(min_store_bytes(4096, 256)), {}};
    const auto cow_bytes = target.bytes.size();
    CHECK(
        ExceptionStoreWriter::create(target.writer(), 3000, 4096 * 100, cow_bytes).error().code() ==
        EINVAL);
    CHECK(ExceptionStoreWriter::create(target.writer(), 4096, 4096 * 100, 4096).error().code() ==
          ENOSPC);

    auto w = ExceptionStoreWriter::create(target.writer(), 4096, 4096 * 100, cow_bytes);
    REQUIRE(w->add_chunk(5, chunk_data(5, 4096)).ok());
    CHECK_THAT(w->add_chunk(5, chunk_data(5, 4096)).error().message(),
               Catch::Contains("add chunk 5: invalid argument (not after the previous chunk 5)"));
    CHECK(w->finish().error().code() == EINVAL);  // spent

    auto past = ExceptionStoreWriter::create(target.writer(), 4096, 4096 * 100, cow_bytes);
    CHECK_THAT(past->add_chunk(100, chunk_data(1, 4096)).error().message(),
               Catch::Contains("past the origin's 100 chunks"));
    auto size = ExceptionStoreWriter::create(target.writer(), 4096, 4096 * 100, cow_bytes);
    CHECK(size->add_chunk(1, Bytes(100)).error().code() == EINVAL);

    // 256 chunks fill area 0: the store then needs area 1's metadata chunk, one chunk more.
    MemoryTarget small{Bytes(min_store_bytes(4096, 256) - 4096), {}};
    auto full = ExceptionStoreWriter::create(small.writer(), 4096, 4096 * 1000, small.bytes.size());
    for (std::uint64_t i = 0; i < 255; ++i) {
        REQUIRE(full->add_chunk(i, chunk_data(i, 4096)).ok());
    }
    auto last = full->add_chunk(255, chunk_data(255, 4096));
    REQUIRE_FALSE(last.ok());
    CHECK(last.error().code() == ENOSPC);
    CHECK_THAT(last.error().message(), Catch::Contains("is full after 255 chunks"));
}

TEST_CASE("exception store writer over a sparse file, read back from the file", "[flatten]") {
    char tmpl[] = "/tmp/wrenn-store-writer-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    const std::string dir = tmpl;
    const std::string cow = dir + "/cow";
    const std::uint64_t origin_bytes = 64ull << 20;
    const std::uint64_t cow_bytes = 80ull << 20;
    {
        auto pending = PendingOutput::create(cow, 0600);
        REQUIRE(pending.ok());
        REQUIRE(set_file_size(pending->fd(), cow_bytes, pending->temp_path()).ok());
        auto w = ExceptionStoreWriter::create(pwrite_writer(pending->fd(), pending->temp_path()),
                                              4096, origin_bytes, cow_bytes);
        REQUIRE(w.ok());
        for (std::uint64_t old = 0; old < 16384; old += 7) {
            REQUIRE(w->add_chunk(old, chunk_data(old, 4096)).ok());
        }
        REQUIRE(w->finish().ok());
        REQUIRE(pending->commit().ok());
    }
    struct stat st {};
    REQUIRE(::stat(cow.c_str(), &st) == 0);
    CHECK((st.st_mode & 07777) == 0600);
    CHECK(static_cast<std::uint64_t>(st.st_size) == cow_bytes);
    // Sparse: about 2341 data chunks and 10 metadata chunks allocated, not 80 MiB.
    CHECK(static_cast<std::uint64_t>(st.st_blocks) * 512 < 16ull << 20);

    auto store = read_exception_store_file(cow, origin_bytes);
    REQUIRE(store.ok());
    REQUIRE(store->exceptions.size() == (16384 + 6) / 7);
    int fd = ::open(cow.c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    Bytes got(4096);
    for (const auto& e : store->exceptions) {
        REQUIRE(::pread(fd, got.data(), got.size(), static_cast<off_t>(e.new_chunk * 4096)) ==
                4096);
        REQUIRE(got == chunk_data(e.old_chunk, 4096));
    }
    ::close(fd);
    std::filesystem::remove_all(dir);
}
