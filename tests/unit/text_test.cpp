#include "common/text.hpp"

#include <catch2/catch.hpp>
#include <string>

using wrenn::is_clean_utf8;

TEST_CASE("is_clean_utf8 takes text in any script", "[text]") {
    CHECK(is_clean_utf8(""));
    CHECK(is_clean_utf8("base.img"));
    CHECK(is_clean_utf8("ubuntu 24.04 (server)"));
    CHECK(is_clean_utf8("d\xc3\xa9j\xc3\xa0"));        // déjà
    CHECK(is_clean_utf8("\xe6\xa8\xa1\xe6\x9d\xbf"));  // 模板
    CHECK(is_clean_utf8("\xf0\x9f\x93\xa6"));          // U+1F4E6
    CHECK(is_clean_utf8("\xef\xbf\xbd"));              // U+FFFD itself is text
    CHECK(is_clean_utf8("\xf4\x8f\xbf\xbf"));          // U+10FFFF, the last
}

TEST_CASE("is_clean_utf8 refuses control characters", "[text]") {
    CHECK_FALSE(is_clean_utf8(std::string("a\0b", 3)));
    CHECK_FALSE(is_clean_utf8("a\nb"));
    CHECK_FALSE(is_clean_utf8("a\rb"));
    CHECK_FALSE(is_clean_utf8("a\tb"));
    CHECK_FALSE(is_clean_utf8("\x1b[31mred"));
    CHECK_FALSE(is_clean_utf8("a\x7f"));
    CHECK_FALSE(is_clean_utf8("a\xc2\x85"));  // U+0085 NEL, a C1 line break
    CHECK_FALSE(is_clean_utf8("a\xc2\x9f"));
    CHECK(is_clean_utf8("a\xc2\xa0"));  // U+00A0, the first after C1
}

TEST_CASE("is_clean_utf8 refuses malformed UTF-8", "[text]") {
    CHECK_FALSE(is_clean_utf8("\xff\xfe"));
    CHECK_FALSE(is_clean_utf8("\x80"));              // a continuation byte first
    CHECK_FALSE(is_clean_utf8("\xc3"));              // cut short
    CHECK_FALSE(is_clean_utf8("\xe6\xa8"));          // cut short
    CHECK_FALSE(is_clean_utf8("\xc3\x28"));          // not a continuation
    CHECK_FALSE(is_clean_utf8("\xc0\xaf"));          // overlong '/'
    CHECK_FALSE(is_clean_utf8("\xe0\x80\xaf"));      // overlong '/'
    CHECK_FALSE(is_clean_utf8("\xf0\x80\x80\xaf"));  // overlong '/'
    CHECK_FALSE(is_clean_utf8("\xed\xa0\x80"));      // U+D800, a surrogate
    CHECK_FALSE(is_clean_utf8("\xf4\x90\x80\x80"));  // past U+10FFFF
    CHECK_FALSE(is_clean_utf8("\xf8\x88\x80\x80\x80"));
}
