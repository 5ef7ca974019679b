//! The error every HTTP handler returns; one place maps it to a status and a JSON body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The receiving shard server is not the shard's primary; carries the primary's name.
    #[error("{message}")]
    NotPrimary {
        message: String,
        primary: Option<String>,
    },
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::NotPrimary { .. } => StatusCode::MISDIRECTED_REQUEST,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Rebuilds an error from a status and message received from another shardline component,
    /// so a gateway can pass a server's or the manager's answer through unchanged.
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
            503 => ApiError::Unavailable(message),
            _ => ApiError::Internal(message),
        }
    }

    pub fn message(&self) -> String {
        self.to_string()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            ApiError::NotPrimary { message, primary } => {
                json!({"message": message, "primary": primary, "status": "failure"})
            }
            other => json!({"message": other.to_string(), "status": "failure"}),
        };
        (status, Json(body)).into_response()
    }
}
