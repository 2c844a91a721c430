#pragma once

#include <string_view>

namespace wrenn {

// Whether `text` is well-formed UTF-8 (no overlong forms, surrogates or code points past
// U+10FFFF) without control characters (U+0000 to U+001F, U+007F to U+009F): what a name a
// client or an archive sends must be before the agent logs it or puts it in a JSON answer.
bool is_clean_utf8(std::string_view text);

}  // namespace wrenn
