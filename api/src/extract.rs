//! Axum's `Path` and `Query`, with our fault body when they reject (a path
//! segment that is not UTF-8, a query parameter of the wrong type), as in the
//! axum examples: the rejection is our one error type (the conversions are in
//! [`crate::error`]).

use axum::extract::FromRequestParts;

use crate::error::ApiError;

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);
