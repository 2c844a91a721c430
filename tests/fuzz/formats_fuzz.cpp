// libFuzzer target over the text the agent reads outside HTTP: --listen addresses
// (http::parse_listen_address) and sandbox.json records on disk (agent::record_from_json, after
// boost::json::parse, as the state store reads them). The first byte picks the parser; the rest
// is the text. Beyond "no crash, no UB", both round-trip: what parses, printed back, parses to
// the same value.

#include <boost/json.hpp>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "agent/state/sandbox.hpp"
#include "http/core/listen_address.hpp"

namespace {

[[noreturn]] void fail(const std::string& what) {
    std::fprintf(stderr, "formats_fuzz: %s\n", what.c_str());
    std::abort();
}

void listen_address(std::string_view text) {
    auto parsed = wrenn::http::parse_listen_address(text);
    if (!parsed) {
        (void)parsed.error().message();
        return;
    }
    (void)parsed->is_loopback();
    const std::string printed = parsed->to_string();
    auto again = wrenn::http::parse_listen_address(printed);
    if (!again) {
        fail("'" + std::string(text) + "' parsed, but its to_string '" + printed +
             "' does not: " + again.error().message());
    }
    if (!(*again == *parsed)) {
        fail("'" + std::string(text) + "' -> '" + printed + "' -> '" + again->to_string() + "'");
    }
}

void record(std::string_view text) {
    boost::system::error_code ec;
    boost::json::value value = boost::json::parse(text, ec);
    if (ec) {
        return;
    }
    auto sandbox = wrenn::agent::record_from_json(value);
    if (!sandbox) {
        (void)sandbox.error().message();
        return;
    }
    (void)wrenn::agent::api_view(*sandbox);
    const boost::json::value written = wrenn::agent::record_to_json(*sandbox);
    auto again = wrenn::agent::record_from_json(written);
    if (!again) {
        fail("a record that read back cannot be read after writing: " + again.error().message() +
             "\n" + boost::json::serialize(written));
    }
    if (wrenn::agent::record_to_json(*again) != written) {
        fail("record changed on a write/read round trip: " + boost::json::serialize(written));
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) {
        return 0;
    }
    const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
    if ((data[0] & 1) == 0) {
        listen_address(text);
    } else {
        record(text);
    }
    return 0;
}
