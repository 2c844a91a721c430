// The pure dm formats: names, the snapshot table, the status line, CoW sizing.
#include <catch2/catch.hpp>
#include <cerrno>
#include <string>

#include "dm/snapshot_format.hpp"

using namespace wrenn::dm;
using State = SnapshotStatus::State;

TEST_CASE("dm: snapshot table params are origin, cow, persistent, 8-sector chunks", "[dm-format]") {
    CHECK(snapshot_table_params("7:0", "7:1") == "7:0 7:1 P 8");
    CHECK(snapshot_table_params("/dev/loop3", "/dev/loop4") == "/dev/loop3 /dev/loop4 P 8");
}

TEST_CASE("dm: device names and uuids carry wrenn's prefixes", "[dm-format]") {
    CHECK(device_name("sb1") == "wrenn-sb1");
    CHECK(device_uuid("0123456789abcdef", "sb1") == "WRENN-SNAP-0123456789abcdef-sb1");
    CHECK(legacy_device_uuid("sb1") == "WRENN-SNAP-sb1");
    CHECK(device_name("sb1").rfind(kNamePrefix, 0) == 0);
}

TEST_CASE("dm: sandbox id validation", "[dm-format]") {
    CHECK(is_valid_sandbox_id("a"));
    CHECK(is_valid_sandbox_id("0"));
    CHECK(is_valid_sandbox_id("sb-1_x"));
    CHECK(is_valid_sandbox_id("A9-_"));
    CHECK(is_valid_sandbox_id(std::string(64, 'a')));
    CHECK_FALSE(is_valid_sandbox_id(std::string(65, 'a')));
    CHECK_FALSE(is_valid_sandbox_id(""));
    CHECK_FALSE(is_valid_sandbox_id("-sb"));
    CHECK_FALSE(is_valid_sandbox_id("_sb"));
    CHECK_FALSE(is_valid_sandbox_id("a/b"));
    CHECK_FALSE(is_valid_sandbox_id(".."));
    CHECK_FALSE(is_valid_sandbox_id("a..b"));
    CHECK_FALSE(is_valid_sandbox_id("a b"));
    CHECK_FALSE(is_valid_sandbox_id("a\nb"));
    CHECK_FALSE(is_valid_sandbox_id(std::string("a\0b", 3)));
    CHECK_FALSE(is_valid_sandbox_id("caf\xc3\xa9"));  // UTF-8 e-acute
    CHECK_FALSE(is_valid_sandbox_id("\xc3\xa9t\xc3\xa9"));
}

TEST_CASE("dm: status of an active snapshot", "[dm-format]") {
    auto s = parse_snapshot_status("16/2048 16");
    REQUIRE(s.ok());
    CHECK(s->state == State::Active);
    CHECK(s->allocated_sectors == 16);
    CHECK(s->total_sectors == 2048);
    CHECK(s->metadata_sectors == 16);

    auto big = parse_snapshot_status("34936/35000 280\n");
    REQUIRE(big.ok());
    CHECK(big->allocated_sectors == 34936);

    auto old = parse_snapshot_status("0/2048");  // targets before 1.8.0 print no metadata count
    REQUIRE(old.ok());
    CHECK(old->state == State::Active);
    CHECK(old->total_sectors == 2048);
    CHECK(old->metadata_sectors == 0);
}

TEST_CASE("dm: status words for broken snapshots", "[dm-format]") {
    CHECK(parse_snapshot_status("Invalid")->state == State::Invalid);
    CHECK(parse_snapshot_status("Overflow")->state == State::Overflow);
    CHECK(parse_snapshot_status("Merge failed")->state == State::MergeFailed);
    CHECK(parse_snapshot_status("Unknown")->state == State::Unknown);
}

TEST_CASE("dm: garbage status is an EINVAL error", "[dm-format]") {
    for (const char* bad :
         {"", "/", "1/", "/2", "x/2 3", "1/2 x", "1/2 3 4", "-1/2 3", "3/2 1", "invalid", "Merge",
          "Overflow!", "1 / 2 3", "18446744073709551616/1 0"}) {
        INFO("status \"" << bad << "\"");
        auto s = parse_snapshot_status(bad);
        REQUIRE_FALSE(s.ok());
        CHECK(s.error().code() == EINVAL);
    }
}

namespace {
constexpr std::uint64_t kChunk = 4096;
constexpr std::uint64_t kSpareArea = 257;  // one metadata chunk + 256 data chunks
}  // namespace

TEST_CASE("dm: CoW size for small origins", "[dm-format]") {
    // header + metadata + data + spare area, in chunks
    CHECK(cow_size_for_origin(0) == (1 + 0 + 0 + kSpareArea) * kChunk);
    CHECK(cow_size_for_origin(4096) == (1 + 1 + 1 + kSpareArea) * kChunk);
    CHECK(cow_size_for_origin(1) == (1 + 1 + 1 + kSpareArea) * kChunk);     // partial chunk
    CHECK(cow_size_for_origin(4097) == (1 + 1 + 2 + kSpareArea) * kChunk);  // partial last
    CHECK(cow_size_for_origin(256 * kChunk) == (1 + 1 + 256 + kSpareArea) * kChunk);
    CHECK(cow_size_for_origin(257 * kChunk) == (1 + 2 + 257 + kSpareArea) * kChunk);
}

TEST_CASE("dm: CoW size for 16 MiB and 1 GiB origins", "[dm-format]") {
    // 16 MiB = 4096 chunks, 16 metadata chunks.
    CHECK(cow_size_for_origin(16ull << 20) == 4370ull * kChunk);
    CHECK(cow_size_for_origin(16ull << 20) == 17899520ull);
    // 1 GiB = 262144 chunks, 1024 metadata chunks.
    CHECK(cow_size_for_origin(1ull << 30) == 263426ull * kChunk);
    CHECK(cow_size_for_origin(1ull << 30) == 1078992896ull);
}

TEST_CASE("dm: CoW always holds a full rewrite of the origin", "[dm-format]") {
    for (std::uint64_t c = 1; c <= 3000; ++c) {
        for (std::uint64_t bytes : {c * kChunk, c * kChunk - 511}) {
            const std::uint64_t size = cow_size_for_origin(bytes);
            INFO("origin chunks " << c << ", bytes " << bytes);
            REQUIRE(size % kChunk == 0);
            const std::uint64_t needed = 1 + (c + 255) / 256 + c;
            REQUIRE(size / kChunk >= needed);
            // The chunk dm-snap-persistent zeroes when an area fills (the next metadata chunk)
            // must lie inside the store too.
            const std::uint64_t areas = (c + 255) / 256;
            REQUIRE(size / kChunk > 1 + areas * kSpareArea);
        }
    }
}

TEST_CASE("snapshot table: the origin and CoW devices as the kernel prints them", "[dm]") {
    auto t = wrenn::dm::parse_snapshot_table("7:0 7:1 P 8");
    REQUIRE(t.ok());
    CHECK(t->origin == "7:0");
    CHECK(t->cow == "7:1");
    CHECK(wrenn::dm::parse_snapshot_table("").error().code() == EINVAL);
    CHECK(wrenn::dm::parse_snapshot_table("7:0").error().code() == EINVAL);
    CHECK(wrenn::dm::parse_snapshot_table("7:0  P 8").error().code() == EINVAL);
    CHECK(wrenn::dm::parse_snapshot_table(" 7:1 P 8").error().code() == EINVAL);
}

TEST_CASE("dm: allocated bytes of a loaded store, as the kernel's status reports them",
          "[dm-format]") {
    // Explicit values: the header and first metadata chunk only; a full area; one past it.
    CHECK(persistent_store_allocated_bytes(0) == 2 * 4096);
    CHECK(persistent_store_allocated_bytes(1) == 3 * 4096);
    CHECK(persistent_store_allocated_bytes(255) == 257 * 4096);
    CHECK(persistent_store_allocated_bytes(256) == 259 * 4096);  // next_free skips area 1's head
    CHECK(persistent_store_allocated_bytes(257) == 260 * 4096);
    // And against read_exceptions' own steps, for stores laid out as the kernel lays them out:
    // next_free moves past each data chunk, then skip_metadata steps over a metadata chunk.
    const std::uint64_t stride = kExceptionsPerArea + 1;
    std::uint64_t next_free = 2;
    for (std::uint64_t n = 0; n <= 3 * kExceptionsPerArea + 5; ++n) {
        if (n > 0) {
            const std::uint64_t i = n - 1;
            const std::uint64_t new_chunk = 2 + i + i / kExceptionsPerArea;
            next_free = std::max(next_free, new_chunk + 1);
        }
        std::uint64_t loaded = next_free;
        if (loaded % stride == 1) {
            ++loaded;
        }
        CAPTURE(n);
        CHECK(persistent_store_allocated_bytes(n) == loaded * kChunkBytes);
    }
}
