#pragma once

#include <string>
#include <string_view>

namespace wrenn {

// What went wrong, to what, and the errno, in words a person can act on:
// "pause sb1: remove wrenn-sb1: device busy (open count 1)".
// Callers decide on code() (an errno value), never on the message text.
class Error {
  public:
    // action: what was being done and to what ("remove wrenn-sb1").
    // code: an errno value, or 0 when the failure is not a system error.
    // detail: extra facts in parentheses ("open count 1"); may be empty.
    Error(std::string action, int code, std::string detail = {});

    // The same error, seen from an outer operation: "pause sb1" + ": " + this.
    [[nodiscard]] Error within(std::string_view outer_action) const&;
    [[nodiscard]] Error within(std::string_view outer_action) &&;

    [[nodiscard]] int code() const noexcept { return code_; }
    [[nodiscard]] const std::string& action() const noexcept { return action_; }
    [[nodiscard]] const std::string& detail() const noexcept { return detail_; }
    [[nodiscard]] std::string message() const;

  private:
    std::string action_;
    int code_;
    std::string detail_;
};

// Short, lower-case description of an errno value ("device busy", "no such file or directory").
std::string describe_errno(int code);

// Error for the current errno: errno_error("open /dev/loop3").
Error errno_error(std::string action);

}  // namespace wrenn
