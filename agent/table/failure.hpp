#pragma once

#include <string_view>
#include <utility>

#include "agent/state/sandbox.hpp"
#include "common/error.hpp"
#include "common/result.hpp"

namespace wrenn::agent {

// Why an agent operation failed, as the API reports it. The Error says what happened in words;
// the kind says what the client can do about it (and picks the HTTP status and error code).
enum class FailureKind {
    InvalidRequest,        // 400 invalid_request
    NotFound,              // 404 not_found
    TemplateNotFound,      // 404 template_not_found
    AlreadyExists,         // 409 already_exists
    TemplateExists,        // 409 template_exists
    InvalidState,          // 409 invalid_state
    DeviceBusy,            // 409 device_busy
    TcmuNotAllowed,        // 403 tcmu_not_allowed: a TCMU origin outside --tcmu-config-dir/-handler
    SnapshotInvalid,       // 409 snapshot_invalid
    TemplateChanged,       // 409 template_changed
    TemplateMismatch,      // 409 template_mismatch: no local template has an archive's digest
    TemplateInUse,         // 409 template_in_use: a delete of a template sandboxes use
    TemplateBusy,          // 409 template_busy: an upload or delete of the name is running
    InvalidArchive,        // 400 invalid_archive: a truncated, corrupt or oversized archive
    InvalidImage,          // 400 invalid_image: an upload's body is no well-formed image
    DigestMismatch,        // 400 digest_mismatch: an upload is not the image its digest names
    DigestPending,         // 503 digest_pending: a template's digest is still being read
    PayloadTooLarge,       // 413 payload_too_large: an archive over its import limit
    TransferTooSlow,       // 408 transfer_too_slow: an upload under --min-transfer-rate
    TooManyTransfers,      // 503 too_many_transfers: --max-transfers are running
    InsufficientStorage,   // 507 insufficient_storage: the state filesystem is below --min-free
    Unavailable,           // 503 unavailable
    BackstoreUnavailable,  // 503 backstore_unavailable: no userspace handler took a TCMU device
    Internal,              // 500 internal
};

std::string_view failure_code(FailureKind kind);
unsigned failure_http_status(FailureKind kind);

struct Failure {
    FailureKind kind;
    Error error;
};

inline Failure failure(FailureKind kind, std::string action, int code = 0,
                       std::string detail = {}) {
    return Failure{kind, Error(std::move(action), code, std::move(detail))};
}

inline Failure internal(Error error) {
    return Failure{FailureKind::Internal, std::move(error)};
}

// An origin that could not be acquired: ESTALE means the template's path names another file
// than the one checked a moment ago (or recorded); ETIMEDOUT from a TCMU attach, that no
// userspace handler took the device or served its disk (the message says which backstore to
// start): the service the origin needs is down, 503.
Failure origin_failure(const OriginSpec& origin, Error error);

struct Done {};  // the value of an operation that returns nothing (destroy)

}  // namespace wrenn::agent
