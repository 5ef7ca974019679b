//! The error every HTTP handler returns; one place maps it to a status and a JSON body.
//!
//! Every failure body carries, besides the assignment's `message` and `"status": "failure"`,
//! a stable machine-readable [`ErrorCode`] (`code`) and the request's [`Effect`] (`outcome`):
//! whether it certainly changed nothing (`not_applied`) or may have taken effect (`unknown`).
//! Clients and the test harness decide on those two fields, never on the English message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed or breaks a rule of the API.
    #[error("{0}")]
    BadRequest(String),
    /// 401: a configured token is missing or wrong.
    #[error("{0}")]
    Unauthorized(String),
    /// 404: unknown record, server, shard or endpoint.
    #[error("{0}")]
    NotFound(String),
    /// 409: a key that a write inserts exists already (or appears twice in the request).
    #[error("{0}")]
    Duplicate(String),
    /// 409: any other conflict with the cluster's state (configured twice, last replica…).
    #[error("{0}")]
    Conflict(String),
    /// 421: the receiving shard server is not the shard's primary; carries the primary's name.
    #[error("{message}")]
    NotPrimary {
        message: String,
        primary: Option<String>,
    },
    /// 413: the body, or the log entry it needs, is over a configured limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 503: the shard has no primary (none elected, or none reachable to elect).
    #[error("{0}")]
    NoPrimary(String),
    /// 503: the entry of a primary that was deposed was skipped by every replica.
    #[error("{0}")]
    Deposed(String),
    /// 503: refused before anything was appended (not configured, recovering, the primary
    /// not yet serving its term, a server that could not be reached, shutting down…).
    #[error("{0}")]
    Unavailable(String),
    /// 503: the entry is in the log but fewer than a majority of replicas applied it in time.
    #[error("{0}")]
    NoQuorum(String),
    /// 503: the log could not confirm the append (unreachable, rejected, too slow).
    #[error("{0}")]
    LogUnavailable(String),
    /// 503: the shard's log no longer holds what its replicas applied (rolled back, purged
    /// past every replica, deleted or re-created): the shard serves nothing until recovered.
    #[error("{0}")]
    LogFault(String),
    /// 503: the request was sent on and no answer came back: it may have been applied.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// 500: a bug or an unexpected state; the outcome of a write is unknown.
    #[error("{0}")]
    Internal(String),
}

/// The machine-readable kind of a failure, the `code` field of every failure body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    NotFound,
    DuplicateKey,
    Conflict,
    NotPrimary,
    TooLarge,
    NoPrimary,
    Deposed,
    Unavailable,
    NoQuorum,
    LogUnavailable,
    OutcomeUnknown,
    Internal,
    LogFault,
    /// Only in the gateway's `/write` answer when some shards committed and others did not.
    PartialWrite,
}

/// What a failed request did: the `outcome` field of every failure body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Certainly nothing was written: retrying cannot apply the request twice.
    NotApplied,
    /// The request may have been applied, in whole or (for a multi-shard write) in part.
    Unknown,
}

impl ErrorCode {
    /// Every code, in documentation order.
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::NotFound,
        ErrorCode::DuplicateKey,
        ErrorCode::Conflict,
        ErrorCode::NotPrimary,
        ErrorCode::TooLarge,
        ErrorCode::NoPrimary,
        ErrorCode::Deposed,
        ErrorCode::Unavailable,
        ErrorCode::NoQuorum,
        ErrorCode::LogUnavailable,
        ErrorCode::OutcomeUnknown,
        ErrorCode::Internal,
        ErrorCode::LogFault,
        ErrorCode::PartialWrite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::DuplicateKey => "duplicate_key",
            ErrorCode::Conflict => "conflict",
            ErrorCode::NotPrimary => "not_primary",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::NoPrimary => "no_primary",
            ErrorCode::Deposed => "deposed",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::NoQuorum => "no_quorum",
            ErrorCode::LogUnavailable => "log_unavailable",
            ErrorCode::OutcomeUnknown => "outcome_unknown",
            ErrorCode::Internal => "internal",
            ErrorCode::LogFault => "log_fault",
            ErrorCode::PartialWrite => "partial_write",
        }
    }

    /// The effect a failure of this kind had on the data.
    pub fn effect(self) -> Effect {
        match self {
            ErrorCode::NoQuorum
            | ErrorCode::LogUnavailable
            | ErrorCode::OutcomeUnknown
            | ErrorCode::Internal
            | ErrorCode::PartialWrite => Effect::Unknown,
            _ => Effect::NotApplied,
        }
    }

    /// The HTTP status of an answer with this code.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::DuplicateKey | ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::NotPrimary => StatusCode::MISDIRECTED_REQUEST,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::NoPrimary
            | ErrorCode::Deposed
            | ErrorCode::Unavailable
            | ErrorCode::NoQuorum
            | ErrorCode::LogUnavailable
            | ErrorCode::OutcomeUnknown
            | ErrorCode::LogFault
            | ErrorCode::PartialWrite => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// One line for the API reference.
    pub fn meaning(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "the request is malformed or breaks a rule of the API",
            ErrorCode::Unauthorized => "the admin token is missing or wrong",
            ErrorCode::NotFound => "unknown record, server, shard or endpoint",
            ErrorCode::DuplicateKey => "a key the write inserts exists already, or appears twice in it",
            ErrorCode::Conflict => "the request conflicts with the cluster's state",
            ErrorCode::NotPrimary => "(shard servers only) this server is not the shard's primary; `primary` names it",
            ErrorCode::TooLarge => "the body, or the log entry it needs, is over a limit",
            ErrorCode::NoPrimary => "the shard has no primary to take the write",
            ErrorCode::Deposed => "the primary was deposed; every replica skipped its entry",
            ErrorCode::Unavailable => "refused before anything was written (not configured, recovering, unreachable, not yet serving)",
            ErrorCode::NoQuorum => "the entry is in the log but a majority did not apply it in time",
            ErrorCode::LogUnavailable => "the log did not confirm the append",
            ErrorCode::OutcomeUnknown => "no answer came back from the shard's primary",
            ErrorCode::Internal => "an unexpected error",
            ErrorCode::LogFault => "the shard's log lost entries its replicas applied (rolled back, purged, re-created): the shard serves nothing until recovered",
            ErrorCode::PartialWrite => "a multi-shard write committed on some shards only (`committed`, `failed`, `failed_codes`)",
        }
    }

    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure body as it travels between shardline components (and to clients).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A string, except in the assignment's shapes that nest an object.
    pub message: serde_json::Value,
    /// Absent only in answers from something that is not shardline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Effect>,
    /// With `not_primary`: the shard's primary as the refusing server knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    pub status: crate::internal::Status,
}

impl ApiError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::BadRequest(_) => ErrorCode::BadRequest,
            ApiError::Unauthorized(_) => ErrorCode::Unauthorized,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::Duplicate(_) => ErrorCode::DuplicateKey,
            ApiError::Conflict(_) => ErrorCode::Conflict,
            ApiError::NotPrimary { .. } => ErrorCode::NotPrimary,
            ApiError::PayloadTooLarge(_) => ErrorCode::TooLarge,
            ApiError::NoPrimary(_) => ErrorCode::NoPrimary,
            ApiError::Deposed(_) => ErrorCode::Deposed,
            ApiError::Unavailable(_) => ErrorCode::Unavailable,
            ApiError::NoQuorum(_) => ErrorCode::NoQuorum,
            ApiError::LogUnavailable(_) => ErrorCode::LogUnavailable,
            ApiError::OutcomeUnknown(_) => ErrorCode::OutcomeUnknown,
            ApiError::Internal(_) => ErrorCode::Internal,
            ApiError::LogFault(_) => ErrorCode::LogFault,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.code().status()
    }

    pub fn effect(&self) -> Effect {
        self.code().effect()
    }

    /// Rebuilds an error from a code and message received from another shardline component,
    /// so a gateway can pass a server's or the manager's answer through unchanged.
    pub fn from_code(code: ErrorCode, message: String, primary: Option<String>) -> ApiError {
        match code {
            ErrorCode::BadRequest => ApiError::BadRequest(message),
            ErrorCode::Unauthorized => ApiError::Unauthorized(message),
            ErrorCode::NotFound => ApiError::NotFound(message),
            ErrorCode::DuplicateKey => ApiError::Duplicate(message),
            ErrorCode::Conflict => ApiError::Conflict(message),
            ErrorCode::NotPrimary => ApiError::NotPrimary { message, primary },
            ErrorCode::TooLarge => ApiError::PayloadTooLarge(message),
            ErrorCode::NoPrimary => ApiError::NoPrimary(message),
            ErrorCode::Deposed => ApiError::Deposed(message),
            ErrorCode::Unavailable => ApiError::Unavailable(message),
            ErrorCode::NoQuorum => ApiError::NoQuorum(message),
            ErrorCode::LogUnavailable => ApiError::LogUnavailable(message),
            ErrorCode::OutcomeUnknown | ErrorCode::PartialWrite => {
                ApiError::OutcomeUnknown(message)
            }
            ErrorCode::Internal => ApiError::Internal(message),
            ErrorCode::LogFault => ApiError::LogFault(message),
        }
    }

    /// Rebuilds an error from a bare status, for an answer without a `code` (not from
    /// shardline). A 503 without a code may have been applied.
    pub fn from_status(status: u16, message: String) -> ApiError {
        match status {
            400 => ApiError::BadRequest(message),
            401 => ApiError::Unauthorized(message),
            404 => ApiError::NotFound(message),
            409 => ApiError::Conflict(message),
            413 => ApiError::PayloadTooLarge(message),
            421 => ApiError::NotPrimary {
                message,
                primary: None,
            },
            503 => ApiError::OutcomeUnknown(message),
            _ => ApiError::Internal(message),
        }
    }

    pub fn message(&self) -> String {
        self.to_string()
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            message: self.to_string().into(),
            code: Some(self.code()),
            outcome: Some(self.effect()),
            primary: match self {
                ApiError::NotPrimary { primary, .. } => primary.clone(),
                _ => None,
            },
            status: crate::internal::Status::Failure,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::to_value(self.body()).unwrap_or_default();
        // The assignment's 421 shape names the primary even when there is none yet.
        if let (ApiError::NotPrimary { primary: None, .. }, Some(obj)) =
            (&self, body.as_object_mut())
        {
            obj.insert("primary".into(), serde_json::Value::Null);
        }
        (self.status(), Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "{c} twice");
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
            let json = serde_json::to_value(c).unwrap();
            assert_eq!(json, c.as_str());
        }
    }

    #[test]
    fn every_error_rebuilds_from_its_body() {
        let errors = [
            ApiError::BadRequest("b".into()),
            ApiError::Duplicate("d".into()),
            ApiError::NotPrimary {
                message: "n".into(),
                primary: Some("Server1".into()),
            },
            ApiError::NoQuorum("q".into()),
            ApiError::Deposed("x".into()),
        ];
        for e in errors {
            let body: ErrorBody =
                serde_json::from_value(serde_json::to_value(e.body()).unwrap()).unwrap();
            let back = ApiError::from_code(
                body.code.unwrap(),
                body.message.as_str().unwrap().to_owned(),
                body.primary.clone(),
            );
            assert_eq!(back.code(), e.code());
            assert_eq!(back.message(), e.message());
            assert_eq!(back.status(), e.status());
            assert_eq!(body.outcome, Some(e.effect()));
        }
    }

    #[test]
    fn only_unsure_failures_say_unknown() {
        assert_eq!(ApiError::NoQuorum(String::new()).effect(), Effect::Unknown);
        assert_eq!(
            ApiError::OutcomeUnknown(String::new()).effect(),
            Effect::Unknown
        );
        assert_eq!(
            ApiError::Deposed(String::new()).effect(),
            Effect::NotApplied
        );
        assert_eq!(
            ApiError::Duplicate(String::new()).effect(),
            Effect::NotApplied
        );
        assert_eq!(
            ApiError::Duplicate(String::new()).status(),
            StatusCode::CONFLICT
        );
        assert_eq!(
            ApiError::NoPrimary(String::new()).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
