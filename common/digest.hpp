#pragma once

// SHA-256 through OpenSSL's libcrypto (EVP interface): a streaming hasher for data that arrives
// in pieces (template contents, read a buffer at a time) and a one-shot form for short strings
// (TCMU origin specs). The digest algorithm is fetched once per process, so a new hasher costs
// one context allocation.

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

struct evp_md_ctx_st;

namespace wrenn {

// One SHA-256 computation: update() any number of times, then digest() or hex_digest() once.
// Move-only; the OpenSSL context is freed on destruction. Allocation failure throws
// std::bad_alloc (nothing can recover from that); SHA-256 itself cannot fail.
class Sha256 {
  public:
    static constexpr std::size_t kDigestBytes = 32;

    Sha256();
    ~Sha256();
    Sha256(Sha256&&) noexcept;
    Sha256& operator=(Sha256&&) noexcept;
    Sha256(const Sha256&) = delete;
    Sha256& operator=(const Sha256&) = delete;

    void update(const void* data, std::size_t size);
    void update(std::string_view bytes) { update(bytes.data(), bytes.size()); }

    // Finishes the computation; after it, update() and digest() must not be called again.
    std::array<std::uint8_t, kDigestBytes> digest();
    // The digest as 64 lowercase hex digits.
    std::string hex_digest();

  private:
    struct FreeContext {
        void operator()(evp_md_ctx_st* ctx) const noexcept;
    };
    std::unique_ptr<evp_md_ctx_st, FreeContext> ctx_;
};

// SHA-256 of `bytes` as 64 lowercase hex digits.
std::string sha256_hex(std::string_view bytes);

// Whether `given` equals the secret `expected`, in time that depends on neither's content nor
// on where they differ: both are hashed and the digests compared with CRYPTO_memcmp, so not
// even the secret's length shows.
bool same_secret(std::string_view given, std::string_view expected);

// Lowercase hex of a byte string.
std::string to_hex(const std::uint8_t* data, std::size_t size);

}  // namespace wrenn
