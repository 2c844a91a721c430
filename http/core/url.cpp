#include "http/core/url.hpp"

namespace wrenn::http {

std::string_view strip_query(std::string_view target) {
    if (const auto scheme = target.find("://");
        !target.starts_with('/') && scheme != std::string_view::npos) {
        const auto path = target.find_first_of("/?", scheme + 3);
        target = path == std::string_view::npos ? std::string_view("/") : target.substr(path);
    }
    return target.substr(0, target.find('?'));
}

std::string printable_path(std::string_view target) {
    static constexpr char kHex[] = "0123456789ABCDEF";
    std::string out;
    for (const char c : strip_query(target)) {
        const auto u = static_cast<unsigned char>(c);
        if (u >= 0x20 && u < 0x7f) {
            out += c;
        } else {
            out += '%';
            out += kHex[u >> 4];
            out += kHex[u & 0xf];
        }
    }
    return out;
}

std::vector<std::string_view> split_path(std::string_view path) {
    std::vector<std::string_view> parts;
    std::size_t pos = 0;
    while (pos < path.size()) {
        if (path[pos] == '/') {
            ++pos;
            continue;
        }
        auto end = path.find('/', pos);
        if (end == std::string_view::npos) {
            end = path.size();
        }
        parts.push_back(path.substr(pos, end - pos));
        pos = end;
    }
    return parts;
}

std::optional<std::string_view> query_param(std::string_view target, std::string_view key) {
    const auto mark = target.find('?');
    if (mark == std::string_view::npos) {
        return std::nullopt;
    }
    std::string_view query = target.substr(mark + 1);
    while (!query.empty()) {
        const auto amp = query.find('&');
        const std::string_view pair = query.substr(0, amp);
        const auto eq = pair.find('=');
        if (pair.substr(0, eq) == key) {
            return eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1);
        }
        if (amp == std::string_view::npos) {
            break;
        }
        query.remove_prefix(amp + 1);
    }
    return std::nullopt;
}

}  // namespace wrenn::http
