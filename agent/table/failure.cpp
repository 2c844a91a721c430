#include "agent/table/failure.hpp"

#include <cerrno>

namespace wrenn::agent {

std::string_view failure_code(FailureKind kind) {
    switch (kind) {
        case FailureKind::InvalidRequest:
            return "invalid_request";
        case FailureKind::NotFound:
            return "not_found";
        case FailureKind::TemplateNotFound:
            return "template_not_found";
        case FailureKind::AlreadyExists:
            return "already_exists";
        case FailureKind::TemplateExists:
            return "template_exists";
        case FailureKind::InvalidState:
            return "invalid_state";
        case FailureKind::DeviceBusy:
            return "device_busy";
        case FailureKind::TcmuNotAllowed:
            return "tcmu_not_allowed";
        case FailureKind::SnapshotInvalid:
            return "snapshot_invalid";
        case FailureKind::TemplateChanged:
            return "template_changed";
        case FailureKind::TemplateMismatch:
            return "template_mismatch";
        case FailureKind::TemplateInUse:
            return "template_in_use";
        case FailureKind::TemplateBusy:
            return "template_busy";
        case FailureKind::InvalidArchive:
            return "invalid_archive";
        case FailureKind::InvalidImage:
            return "invalid_image";
        case FailureKind::DigestMismatch:
            return "digest_mismatch";
        case FailureKind::DigestPending:
            return "digest_pending";
        case FailureKind::PayloadTooLarge:
            return "payload_too_large";
        case FailureKind::TransferTooSlow:
            return "transfer_too_slow";
        case FailureKind::TooManyTransfers:
            return "too_many_transfers";
        case FailureKind::InsufficientStorage:
            return "insufficient_storage";
        case FailureKind::Unavailable:
            return "unavailable";
        case FailureKind::BackstoreUnavailable:
            return "backstore_unavailable";
        case FailureKind::Internal:
            return "internal";
    }
    return "internal";
}

Failure origin_failure(const OriginSpec& origin, Error error) {
    const FailureKind kind = error.code() == ESTALE ? FailureKind::TemplateChanged
                             : error.code() == ETIMEDOUT && origin.type == OriginSpec::Type::Tcmu
                                 ? FailureKind::BackstoreUnavailable
                                 : FailureKind::Internal;
    return Failure{kind, std::move(error)};
}

unsigned failure_http_status(FailureKind kind) {
    switch (kind) {
        case FailureKind::InvalidRequest:
        case FailureKind::InvalidArchive:
        case FailureKind::InvalidImage:
        case FailureKind::DigestMismatch:
            return 400;
        case FailureKind::TcmuNotAllowed:
            return 403;
        case FailureKind::NotFound:
        case FailureKind::TemplateNotFound:
            return 404;
        case FailureKind::AlreadyExists:
        case FailureKind::TemplateExists:
        case FailureKind::InvalidState:
        case FailureKind::DeviceBusy:
        case FailureKind::SnapshotInvalid:
        case FailureKind::TemplateChanged:
        case FailureKind::TemplateMismatch:
        case FailureKind::TemplateInUse:
        case FailureKind::TemplateBusy:
            return 409;
        case FailureKind::TransferTooSlow:
            return 408;
        case FailureKind::PayloadTooLarge:
            return 413;
        case FailureKind::InsufficientStorage:
            return 507;
        case FailureKind::Unavailable:
        case FailureKind::BackstoreUnavailable:
        case FailureKind::TooManyTransfers:
        case FailureKind::DigestPending:
            return 503;
        case FailureKind::Internal:
            return 500;
    }
    return 500;
}

}  // namespace wrenn::agent
