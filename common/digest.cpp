#include "common/digest.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <boost/algorithm/hex.hpp>
#include <iterator>
#include <new>
#include <utility>

namespace wrenn {

namespace {

// OpenSSL 3 looks an algorithm up in its provider tables on every EVP_DigestInit_ex given the
// built-in EVP_sha256(); fetching it once and keeping it for the process avoids that per hash.
const EVP_MD* sha256_md() {
    static EVP_MD* md = [] {
        EVP_MD* fetched = EVP_MD_fetch(nullptr, "SHA256", nullptr);
        if (fetched == nullptr) {
            throw std::bad_alloc();  // only when libcrypto cannot allocate its tables
        }
        return fetched;
    }();
    return md;
}

}  // namespace

void Sha256::FreeContext::operator()(evp_md_ctx_st* ctx) const noexcept {
    EVP_MD_CTX_free(ctx);
}

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
    if (!ctx_ || EVP_DigestInit_ex(ctx_.get(), sha256_md(), nullptr) != 1) {
        throw std::bad_alloc();
    }
}

Sha256::~Sha256() = default;
Sha256::Sha256(Sha256&&) noexcept = default;
Sha256& Sha256::operator=(Sha256&&) noexcept = default;

void Sha256::update(const void* data, std::size_t size) {
    // EVP_DigestUpdate fails only on a context that was never initialised, which the
    // constructor rules out.
    EVP_DigestUpdate(ctx_.get(), data, size);
}

std::array<std::uint8_t, Sha256::kDigestBytes> Sha256::digest() {
    std::array<std::uint8_t, kDigestBytes> out{};
    unsigned int length = 0;
    EVP_DigestFinal_ex(ctx_.get(), out.data(), &length);
    return out;
}

std::string Sha256::hex_digest() {
    const auto bytes = digest();
    return to_hex(bytes.data(), bytes.size());
}

std::string sha256_hex(std::string_view bytes) {
    Sha256 hash;
    hash.update(bytes);
    return hash.hex_digest();
}

std::string to_hex(const std::uint8_t* data, std::size_t size) {
    std::string out;
    out.reserve(size * 2);
    boost::algorithm::hex_lower(data, data + size, std::back_inserter(out));
    return out;
}

bool same_secret(std::string_view given, std::string_view expected) {
    Sha256 a;
    a.update(given);
    Sha256 b;
    b.update(expected);
    const auto x = a.digest();
    const auto y = b.digest();
    return CRYPTO_memcmp(x.data(), y.data(), x.size()) == 0;
}

}  // namespace wrenn
