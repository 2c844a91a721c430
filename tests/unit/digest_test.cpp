#include "common/digest.hpp"

#include <catch2/catch.hpp>
#include <string>

using wrenn::Sha256;
using wrenn::sha256_hex;

// Vectors from FIPS 180-2 appendix B and the empty-message digest every implementation shares.
TEST_CASE("sha256 of the known vectors", "[digest]") {
    CHECK(sha256_hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    CHECK(sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    CHECK(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
          "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST_CASE("sha256 streams: pieces hash as the whole", "[digest]") {
    const std::string million(1000000, 'a');  // FIPS 180-2 B.3
    Sha256 hash;
    for (std::size_t at = 0; at < million.size(); at += 4093) {  // odd-sized pieces
        hash.update(std::string_view(million).substr(at, 4093));
    }
    CHECK(hash.hex_digest() == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");

    Sha256 moved_from;
    moved_from.update("a");
    Sha256 moved = std::move(moved_from);
    moved.update("bc");
    CHECK(moved.hex_digest() == sha256_hex("abc"));
    const auto raw = sha256_hex("abc");
    CHECK(raw.size() == 64);
}
