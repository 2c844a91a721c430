#include "common/error.hpp"

#include <catch2/catch.hpp>
#include <cerrno>

#include "common/result.hpp"

using wrenn::Error;
using wrenn::Result;

TEST_CASE("an error reads as a sentence with its context, errno and detail", "[error]") {
    Error busy("remove wrenn-sb1", EBUSY, "open count 1");
    CHECK(busy.message() == "remove wrenn-sb1: device busy (open count 1)");
    CHECK(busy.within("pause sb1").message() ==
          "pause sb1: remove wrenn-sb1: device busy (open count 1)");
    CHECK(busy.within("pause sb1").code() == EBUSY);
}

TEST_CASE("an error without errno shows only its detail", "[error]") {
    CHECK(Error("read cow", 0, "bad magic 0x0").message() == "read cow: bad magic 0x0");
    CHECK(Error("read cow", 0).message() == "read cow");
}

TEST_CASE("unknown errno values fall back to strerror, lower-cased", "[error]") {
    CHECK(wrenn::describe_errno(EROFS) == "read-only file system");
}

TEST_CASE("Result holds a value or an error", "[error]") {
    Result<int> good = 7;
    REQUIRE(good.ok());
    CHECK(*good == 7);
    Result<int> bad = Error("x", EIO);
    REQUIRE_FALSE(bad.ok());
    CHECK(bad.error().code() == EIO);
    Result<void> done;
    CHECK(done.ok());
}
