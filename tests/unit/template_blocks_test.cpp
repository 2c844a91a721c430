// The template digest (agent/template_blocks): computed over a real sparse file, it equals the
// definition computed here; rehashing the changed chunks from the stored leaf hashes gives the
// same digest as reading the changed image whole; a damaged leaf file is refused.
#include "agent/state/template_blocks.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <random>
#include <string>

#include "agent_fixture.hpp"
#include "common/file.hpp"
#include "common/unique_fd.hpp"

using namespace wrenn;
using namespace wrenn::agent;
using namespace wrenn::agent::testing;

namespace {

constexpr std::uint64_t kMiB = 1 << 20;

// Writes `bytes` at `offset` into path (created sparse, `size` bytes long).
void put(const std::string& path, std::uint64_t offset, const std::string& bytes) {
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
    REQUIRE(fd);
    REQUIRE(::pwrite(fd.get(), bytes.data(), bytes.size(), static_cast<off_t>(offset)) ==
            static_cast<ssize_t>(bytes.size()));
}

std::string slurp_all(const std::string& path) {
    auto text = wrenn::read_file(path, 64 << 20);
    REQUIRE(text.ok());
    return *text;
}

std::string noise(std::size_t n, unsigned seed) {
    std::mt19937 rng(seed);
    std::string out(n, '\0');
    for (auto& c : out) {
        c = static_cast<char>(rng());
    }
    return out;
}

struct Image {
    TempDir dir;
    std::string path = dir.path() + "/t.img";
    std::string leaves = dir.path() + "/t.leaves";
    explicit Image(std::uint64_t size) {
        write_file(path, size);
        write_file(leaves, 0);
    }
    Result<BlockList> hash() {
        auto image = open_template(path, ::geteuid());
        REQUIRE(image.ok());
        UniqueFd out(::open(leaves.c_str(), O_RDWR | O_CLOEXEC));
        return hash_blocks(path, *image, out.get());
    }
};

}  // namespace

TEST_CASE("blocks-sha256-4k over a sparse image is the definition's, holes unread",
          "[template][digest]") {
    // 3 MiB + 1000 bytes: data in group 0, a hole over groups 1-3, data in the short last group.
    Image img(3 * kMiB + 1000);
    put(img.path, 4096 * 3, noise(10000, 1));
    put(img.path, 3 * kMiB + 10, noise(500, 2));
    auto list = img.hash();
    REQUIRE(list.ok());
    CHECK(list->groups.size() == 7);
    CHECK(list->digest() == expected_blocks_digest(slurp_all(img.path)));
    CHECK(list->groups[2] == hole_group_hash(list->image_bytes, 2));
    // Leaf pages are written for the groups with data only: the leaf file stays sparse.
    struct stat st {};
    REQUIRE(::stat(img.leaves.c_str(), &st) == 0);
    CHECK(static_cast<std::uint64_t>(st.st_blocks) * 512 <= 3 * 4096 + 4096);
    // The encoded list decodes to itself; anything else is refused.
    auto decoded = BlockList::decode(list->encode());
    REQUIRE(decoded.ok());
    CHECK(decoded->digest() == list->digest());
    CHECK_FALSE(BlockList::decode(list->encode().substr(0, 40)).ok());
    CHECK_FALSE(BlockList::decode("WRENNBLX" + list->encode().substr(8)).ok());
}

TEST_CASE("rehashing the changed chunks equals hashing the changed image whole",
          "[template][digest]") {
    Image img(2 * kMiB + 4096 * 3 + 512);
    put(img.path, 0, noise(kMiB, 3));  // group 0 and 1 data, the rest a hole
    auto base = img.hash();
    REQUIRE(base.ok());
    // Change chunks in a data group, in a hole group and the short last chunk.
    const std::vector<std::uint64_t> chunks = {5, 6, 200, 300, 512 + 3};
    for (const auto c : chunks) {
        put(img.path, c * 4096, noise(c == 515 ? 512 : 4096, 100 + static_cast<unsigned>(c)));
    }
    const auto leaves = leaves_of_chunks(chunks, 4096, 2 * kMiB + 4096 * 3 + 512);
    CHECK(leaves == chunks);
    auto image = open_template(img.path, ::geteuid());
    REQUIRE(image.ok());
    UniqueFd leaf_fd(::open(img.leaves.c_str(), O_RDWR | O_CLOEXEC));
    auto updated = rehash_blocks(img.path, *image, *base, leaf_fd.get(), leaves);
    REQUIRE(updated.ok());
    CHECK(updated->digest() == expected_blocks_digest(slurp_all(img.path)));
    CHECK(updated->digest() != base->digest());
    // The leaf file was updated in place: a second round of changes over it agrees again.
    put(img.path, 7 * 4096, noise(4096, 7));
    auto again_image = open_template(img.path, ::geteuid());
    REQUIRE(again_image.ok());
    const std::vector<std::uint64_t> seven = {7};
    auto again = rehash_blocks(img.path, *again_image, *updated, leaf_fd.get(), seven);
    REQUIRE(again.ok());
    CHECK(again->digest() == expected_blocks_digest(slurp_all(img.path)));
}

TEST_CASE("a damaged leaf file or a changed image is refused, never hashed into a digest",
          "[template][digest]") {
    Image img(kMiB);
    put(img.path, 0, noise(kMiB, 9));
    auto base = img.hash();
    REQUIRE(base.ok());
    put(img.leaves, 100, "x");  // a flipped byte in group 0's page
    auto image = open_template(img.path, ::geteuid());
    REQUIRE(image.ok());
    UniqueFd leaf_fd(::open(img.leaves.c_str(), O_RDWR | O_CLOEXEC));
    const std::vector<std::uint64_t> one = {1};
    auto damaged = rehash_blocks(img.path, *image, *base, leaf_fd.get(), one);
    REQUIRE_FALSE(damaged.ok());
    CHECK(damaged.error().code() == EINVAL);
    CHECK_THAT(damaged.error().message(), Catch::Contains("do not match"));

    // The image written after it was opened: the read is thrown away (ESTALE).
    put(img.path, 4096, noise(4096, 10));
    auto stale = hash_blocks(img.path, *image, -1);
    REQUIRE_FALSE(stale.ok());
    CHECK(stale.error().code() == ESTALE);
}

TEST_CASE("digest strings name their algorithm; a bare hex is a whole-image sha256",
          "[template][digest]") {
    const std::string hex(64, 'a');
    auto blocks = parse_digest("blocks-sha256-4k:" + hex);
    REQUIRE(blocks);
    CHECK(blocks->algorithm == "blocks-sha256-4k");
    auto bare = parse_digest(hex);
    REQUIRE(bare);
    CHECK(bare->algorithm == "sha256");
    CHECK_FALSE(parse_digest("md5:" + hex));
    CHECK_FALSE(parse_digest("sha256:" + std::string(63, 'a')));
    CHECK_FALSE(parse_digest("sha256:" + std::string(64, 'A')));
    CHECK(is_blocks_digest("blocks-sha256-4k:" + hex));
    CHECK_FALSE(is_blocks_digest("sha256:" + hex));
}
