//! The API's one error type and its one mapping to OpenStack fault bodies:
//! `{"<faultName>": {"code": N, "message": "..."}}`. Every conversion of
//! another error into [`ApiError`] is in this file; how the OpenAPI document
//! describes the fault bodies is beside it, in [`responses`].

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use shutoff_core::acceptor::AcceptError;
use shutoff_core::policy::Refusal;
use shutoff_core::store::StoreError;

/// What a 503 tells the client to wait before trying again.
const RETRY_AFTER_SECS: &str = "1";

/// What a 500 says; the details are logged.
const INTERNAL_MESSAGE: &str =
    "The server has either erred or is incapable of performing the requested operation.";

use crate::action::ActionError;
use crate::keystone::ValidationError;

pub mod responses;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: no token, or an unknown, revoked or expired one. Carries the
    /// identity service's URL when there is one (Keystone mode), sent as
    /// `WWW-Authenticate: Keystone uri="..."` as keystonemiddleware does.
    #[error("The request you have made requires authentication.")]
    Unauthorized { keystone_uri: Option<String> },
    /// 400: malformed body or URL, or a task/launch state that forbids the action.
    #[error("{0}")]
    BadRequest(String),
    /// 403: the token's roles do not allow the action.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such instance, project or resource (for this caller).
    #[error("{0}")]
    NotFound(String),
    /// 405: a known path with a method it does not serve.
    #[error("The method is not allowed for the requested URL.")]
    MethodNotAllowed,
    /// 408: the body did not arrive within the deadline.
    #[error("The request body was not received in time.")]
    RequestTimeout,
    /// 409: vm_state forbids the action, or the instance is locked.
    #[error("{0}")]
    Conflict(String),
    /// 413: body larger than the limit; it is not read.
    #[error("Request is too large.")]
    PayloadTooLarge,
    /// 414: the path and query are longer than the limit.
    #[error("The request URI is too long.")]
    UriTooLong,
    /// 431: the headers are larger than the limit.
    #[error("The request headers are too large.")]
    HeadersTooLarge,
    /// 503: PostgreSQL or Keystone is unreachable, another transaction held
    /// what the request needed, or the request ran out of time before its
    /// statement started; nothing was accepted. Sent with `Retry-After`.
    #[error("{0}")]
    Unavailable(String),
    /// 500: a bug or an unexpected database error. Details are logged, not sent.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
    /// Any status, from the local identity service's routes (`/identity`):
    /// in Keystone's body shape, not Nova's.
    #[error(transparent)]
    Identity(#[from] IdentityFault),
}

/// An error of the local identity service, answered as Keystone answers:
/// `{"error": {"code": N, "title": "<reason phrase>", "message": "..."}}`,
/// a 401 with `WWW-Authenticate: Keystone uri="<identity root>"`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct IdentityFault {
    pub status: StatusCode,
    pub message: String,
    /// The identity service's root URL, named by a 401's `WWW-Authenticate`.
    pub identity_uri: Option<String>,
}

impl IdentityFault {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        IdentityFault {
            status,
            message: message.into(),
            identity_uri: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// Keystone's 401, naming the identity service at `uri`.
    pub fn unauthorized(uri: &str, message: impl Into<String>) -> Self {
        IdentityFault {
            identity_uri: Some(uri.to_string()),
            ..Self::new(StatusCode::UNAUTHORIZED, message)
        }
    }
}

impl ApiError {
    fn status_and_name(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized { .. } => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "badRequest"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "itemNotFound"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "badMethod"),
            ApiError::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "requestTimeout"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflictingRequest"),
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "overLimit"),
            ApiError::UriTooLong => (StatusCode::URI_TOO_LONG, "uriTooLong"),
            ApiError::HeadersTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headersTooLarge",
            ),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "serviceUnavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "computeFault"),
            ApiError::Identity(f) => (f.status, "error"),
        }
    }

    pub fn malformed_body() -> Self {
        ApiError::BadRequest("Malformed request body".into())
    }

    /// The same error in Keystone's body shape, for the identity routes
    /// (a database outage there is Keystone's 503, not Nova's).
    pub fn into_identity(self) -> Self {
        if let ApiError::Identity(_) = self {
            return self;
        }
        let (status, _) = self.status_and_name();
        let message = match &self {
            ApiError::Internal(e) => {
                tracing::error!(error = ?e, "internal error");
                INTERNAL_MESSAGE.to_string()
            }
            other => other.to_string(),
        };
        ApiError::Identity(IdentityFault::new(status, message))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            // The API reaches PostgreSQL itself; a conductor's answer is
            // only ever a worker's, but it too means "try later".
            StoreError::Unavailable(_) | StoreError::Stopped | StoreError::Remote(_) => {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::Unavailable("The database is unavailable; please retry later.".into())
            }
            StoreError::Contention(_) => {
                tracing::warn!(error = %e, "gave way to another transaction");
                ApiError::Unavailable(
                    "Another request is changing this server; nothing was accepted. Please retry later."
                        .into(),
                )
            }
            StoreError::TimedOut(_) | StoreError::Abandoned => ApiError::Unavailable(
                "The request timed out; nothing was accepted. Please retry later.".into(),
            ),
            StoreError::Failed(_) | StoreError::NoAnswer => ApiError::Internal(e.into()),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::from(e).into()
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let msg = r.to_string();
        match r {
            Refusal::NotFound(_) => ApiError::NotFound(msg),
            Refusal::Forbidden => ApiError::Forbidden(msg),
            Refusal::Locked(_) | Refusal::VmState(..) => ApiError::Conflict(msg),
            // Nova answers 409 here; our spec says 400.
            Refusal::TaskState(..) | Refusal::NotLaunched(_) => ApiError::BadRequest(msg),
        }
    }
}

impl From<AcceptError> for ApiError {
    fn from(e: AcceptError) -> Self {
        match e {
            AcceptError::Refused(r) => r.into(),
            AcceptError::Store(e) => e.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, name) = self.status_and_name();
        let message = match &self {
            ApiError::Internal(e) => {
                tracing::error!(error = ?e, "internal error");
                INTERNAL_MESSAGE.to_string()
            }
            other => other.to_string(),
        };
        let body = match &self {
            ApiError::Identity(_) => serde_json::json!({ "error": {
                "code": status.as_u16(),
                "title": status.canonical_reason().unwrap_or("Error"),
                "message": message,
            } }),
            _ => serde_json::json!({ name: { "code": status.as_u16(), "message": message } }),
        };
        let mut resp = (status, body.to_string()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=UTF-8"),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Every 503 is "nothing was done, try again": say when.
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        if let ApiError::Unauthorized {
            keystone_uri: Some(uri),
        } = &self
            && let Ok(v) = HeaderValue::from_str(&format!("Keystone uri=\"{uri}\""))
        {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        if let ApiError::Identity(IdentityFault {
            identity_uri: Some(uri),
            ..
        }) = &self
            && let Ok(v) = HeaderValue::from_str(&format!("Keystone uri=\"{uri}\""))
        {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        resp
    }
}

/// A body that names no action we perform.
impl From<ActionError> for ApiError {
    fn from(e: ActionError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

impl From<PathRejection> for ApiError {
    /// A URL we cannot even decode names nothing we have.
    fn from(_: PathRejection) -> Self {
        ApiError::NotFound("The resource could not be found.".into())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadRequest(format!("Invalid query string: {}", r.body_text()))
    }
}

/// A token Keystone mode could not judge; shared by every request that
/// waited for the same validation.
impl From<Arc<ValidationError>> for ApiError {
    fn from(e: Arc<ValidationError>) -> Self {
        match &*e {
            ValidationError::Keystone(_) => {
                ApiError::Unavailable("The Keystone service is temporarily unavailable.".into())
            }
            // The store's own mapping: unavailable or contention is 503.
            ValidationError::Database(db) => db.clone().into(),
        }
    }
}
