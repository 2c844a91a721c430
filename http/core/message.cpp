#include "http/core/message.hpp"

#include <boost/json.hpp>

namespace wrenn::http {

namespace bhttp = boost::beast::http;

Response error_response(unsigned version, bhttp::status status, std::string_view code,
                        std::string_view message, bool keep_alive) {
    Response res{status, version};
    res.set(bhttp::field::content_type, "application/json");
    const boost::json::object error{{"code", code}, {"message", message}};
    res.body() = boost::json::serialize(boost::json::object{{"error", error}});
    res.keep_alive(keep_alive);
    res.prepare_payload();
    return res;
}

}  // namespace wrenn::http
