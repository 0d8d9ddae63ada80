//! `POST /v3/auth/tokens` and `GET /v3/auth/tokens`: a shutoff token in, the
//! same token out as `X-Subject-Token` (so nothing new is minted, stored or
//! to be revoked), with Keystone's token body: user, project, roles,
//! `issued_at` (when `shutoff-admin token create` made it), `expires_at`,
//! and a catalog whose compute and identity endpoints are this API, as the
//! client reached it ([`base_url`]).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use shutoff_core::store::auth::{self, TokenInfo};
use sqlx::PgPool;

use super::request::{self, Domain, RequestError, Scope};
use super::{root_url, v3_url};
use crate::error::{ApiError, IdentityFault};
use crate::routes::links::base_url;
use crate::server::BodyTimedOut;
use crate::state::IdentityConfig;

/// Keystone's longest token is ~250 bytes; ours are 64.
const MAX_TOKEN_LEN: usize = 8192;

/// shutoff has one domain, Keystone's default one.
const DOMAIN_ID: &str = "default";
const DOMAIN_NAME: &str = "Default";

const SUBJECT_TOKEN: &str = "x-subject-token";

fn unauthorized(headers: &HeaderMap, message: &str) -> ApiError {
    IdentityFault::unauthorized(&root_url(headers), message).into()
}

fn generic_unauthorized(headers: &HeaderMap) -> ApiError {
    unauthorized(
        headers,
        "The request you have made requires authentication.",
    )
}

/// The token's details if it is one of ours, valid, of an open project.
async fn lookup(pool: &PgPool, token: &str) -> Result<Option<TokenInfo>, ApiError> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Ok(None);
    }
    let sha256 = shutoff_core::token::hash(token);
    let info = auth::token_info(pool, &sha256)
        .await
        .map_err(|e| ApiError::from(e).into_identity())?;
    Ok(info.filter(|i| i.caller.project_active))
}

/// `?nocatalog` leaves the catalog out, as in Keystone.
fn wants_catalog(query: Option<&str>) -> bool {
    !query
        .unwrap_or("")
        .split('&')
        .any(|p| p == "nocatalog" || p.starts_with("nocatalog="))
}

/// A token request's body, read up to the API's body limit; a larger one
/// (413), one that does not arrive in time (408) or cannot be read (400) is
/// refused in Keystone's error shape.
pub struct TokenRequestBody(Bytes);

impl<S: Send + Sync> FromRequest<S> for TokenRequestBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Bytes::from_request(req, state).await {
            Ok(b) => Ok(TokenRequestBody(b)),
            Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::PayloadTooLarge.into_identity())
            }
            Err(r) if BodyTimedOut::caused(&r) => Err(ApiError::RequestTimeout.into_identity()),
            Err(_) => Err(IdentityFault::bad_request("The request body could not be read.").into()),
        }
    }
}

/// `POST /v3/auth/tokens` (`token` method): 201 with the same token.
pub async fn issue(
    State(pool): State<PgPool>,
    State(config): State<IdentityConfig>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    TokenRequestBody(body): TokenRequestBody,
) -> Result<Response, ApiError> {
    let req = request::parse(&body).map_err(|e| match e {
        RequestError::Malformed(m) => ApiError::from(IdentityFault::bad_request(m)),
        RequestError::UnsupportedMethod(m) => unauthorized(&headers, &m),
    })?;
    let info = lookup(&pool, &req.token)
        .await?
        .ok_or_else(|| generic_unauthorized(&headers))?;
    check_scope(&info, &req.scope).map_err(|m| unauthorized(&headers, &m))?;
    let body = token_body(
        &info,
        &req.token,
        &headers,
        &config,
        wants_catalog(query.as_deref()),
    );
    Ok(with_subject(StatusCode::CREATED, &req.token, body))
}

/// `GET /v3/auth/tokens`: `X-Auth-Token` asks about `X-Subject-Token`.
/// Keystone's policy `identity:validate_token`: an admin or service, or the
/// subject token's own user (here: the same user of the same project).
pub async fn validate(
    State(pool): State<PgPool>,
    State(config): State<IdentityConfig>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .unwrap_or("")
            .to_string()
    };
    let caller = lookup(&pool, &header("x-auth-token"))
        .await?
        .ok_or_else(|| generic_unauthorized(&headers))?;
    let subject_token = header(SUBJECT_TOKEN);
    let Some(subject) = lookup(&pool, &subject_token).await? else {
        // Keystone names the token here; we never echo one back.
        return Err(IdentityFault::new(StatusCode::NOT_FOUND, "Could not find token.").into());
    };
    let c = &caller.caller;
    let privileged = c.roles.iter().any(|r| r == "admin" || r == "service");
    let own = c.user_id == subject.caller.user_id && c.project_id == subject.caller.project_id;
    if !privileged && !own {
        return Err(IdentityFault::new(
            StatusCode::FORBIDDEN,
            "You are not authorized to perform the requested action: identity:validate_token.",
        )
        .into());
    }
    let body = token_body(
        &subject,
        &subject_token,
        &headers,
        &config,
        wants_catalog(query.as_deref()),
    );
    Ok(with_subject(StatusCode::OK, &subject_token, body))
}

fn with_subject(status: StatusCode, token: &str, body: Value) -> Response {
    let mut resp = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(token) {
        let mut v = v;
        v.set_sensitive(true);
        resp.headers_mut().insert(SUBJECT_TOKEN, v);
    }
    resp
}

/// A shutoff token has one project: a scope naming another one is refused,
/// as Keystone refuses a scope the user has no role on (401).
fn check_scope(info: &TokenInfo, scope: &Scope) -> Result<(), String> {
    let project = info.caller.project_id.as_str();
    let refused = |asked: &str| {
        format!(
            "This token is scoped to project {project} ({}); a shutoff token cannot be scoped to {asked}.",
            info.project_name
        )
    };
    match scope {
        Scope::Default => Ok(()),
        Scope::ProjectId(id) if id == project => Ok(()),
        Scope::ProjectId(id) => Err(refused(&format!("project {id}"))),
        Scope::ProjectName { name, domain } => {
            let in_default = match domain {
                Domain::Id(id) => id == DOMAIN_ID,
                Domain::Name(n) => n == DOMAIN_NAME,
            };
            if in_default && *name == info.project_name {
                Ok(())
            } else {
                Err(refused(&format!("project {name:?} of that domain")))
            }
        }
        Scope::Other(what) => Err(refused(what)),
    }
}

fn keystone_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Keystone's audit id is random per token; ours is derived from the
/// token's hash (not the hash itself), so it is stable and reveals nothing.
fn audit_id(token: &str) -> String {
    let digest = Sha256::digest(format!("audit-id {}", shutoff_core::token::hash(token)));
    hex::encode(digest)[..22].to_string()
}

fn token_body(
    info: &TokenInfo,
    token: &str,
    headers: &HeaderMap,
    config: &IdentityConfig,
    catalog: bool,
) -> Value {
    let c = &info.caller;
    let domain = json!({"id": DOMAIN_ID, "name": DOMAIN_NAME});
    let mut token_doc = json!({
        "methods": ["token"],
        "user": {"id": c.user_id, "name": c.user_id, "domain": domain, "password_expires_at": null},
        "project": {"id": c.project_id.as_str(), "name": info.project_name, "domain": domain},
        "is_domain": false,
        "roles": c.roles.iter().map(|r| json!({"id": r, "name": r})).collect::<Vec<_>>(),
        "audit_ids": [audit_id(token)],
        "issued_at": keystone_time(info.issued_at),
        "expires_at": keystone_time(info.expires_at),
    });
    if catalog {
        token_doc["catalog"] = service_catalog(info, headers, config);
    }
    json!({ "token": token_doc })
}

/// The compute service (this API, `/v2/<project>`) and the identity service
/// (`/identity/v3`), each at the public, internal and admin interfaces.
fn service_catalog(info: &TokenInfo, headers: &HeaderMap, config: &IdentityConfig) -> Value {
    let region: &str = &config.region;
    let service = |kind: &str, name: &str, url: String| {
        let endpoints: Vec<Value> = ["public", "internal", "admin"]
            .iter()
            .map(|interface| {
                json!({
                    "id": format!("shutoff-{kind}-{interface}"),
                    "interface": interface,
                    "region": region,
                    "region_id": region,
                    "url": url,
                })
            })
            .collect();
        json!({"id": format!("shutoff-{kind}"), "type": kind, "name": name, "endpoints": endpoints})
    };
    json!([
        service(
            "compute",
            "nova",
            format!("{}/v2/{}", base_url(headers), info.caller.project_id)
        ),
        service("identity", "keystone", v3_url(headers)),
    ])
}
