//! Axum's `Path` and `Query`, with our fault body when they reject (a path
//! segment that is not UTF-8, a query parameter of the wrong type), as in the
//! axum examples: the rejection is our one error type.

use axum::extract::FromRequestParts;
use axum::extract::rejection::{PathRejection, QueryRejection};

use crate::error::ApiError;

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

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
