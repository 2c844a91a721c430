#pragma once

#include <string_view>

#include "agent/sandboxes/operations.hpp"
#include "agent/table/failure.hpp"
#include "common/result.hpp"

namespace wrenn::agent {

// The body of POST /sandboxes, {"id": ..., "template": ...} or {"id": ..., "origin": {"type":
// "tcmu", "config": ..., "handler": ..., "size_bytes": ...}}, as a CreateRequest; 400
// invalid_request saying what is wrong with it otherwise. Checks the request's shape and names
// only: whether the template exists or the TCMU origin is allowed is the create's to say.
Result<CreateRequest, Failure> parse_create_request(std::string_view body);

}  // namespace wrenn::agent
