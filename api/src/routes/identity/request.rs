//! `POST /v3/auth/tokens`'s body, parsed once into what it asks for: which
//! token, and which project (if any) the new token is to be scoped to.
//! Keystone's shapes; anything else is Keystone's 400 or 401.

use serde::Deserialize;
use serde_json::Value;

/// What a token request asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// The token presented with the `token` method. Never logged.
    pub token: String,
    pub scope: Scope,
}

/// The scope asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Scope {
    /// None given: the token's own project (shutoff tokens are always
    /// project-scoped, so this is what they can give).
    Default,
    /// A project by id.
    ProjectId(String),
    /// A project by name, in a domain by id or by name.
    ProjectName { name: String, domain: Domain },
    /// A domain, the system, `"unscoped"`, a trust: nothing a shutoff token
    /// can be scoped to.
    Other(&'static str),
}

#[derive(Debug, PartialEq, Eq)]
pub enum Domain {
    Id(String),
    Name(String),
}

/// Why a request is refused, before any token is looked at.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Keystone's 400: the body does not have the request's shape.
    #[error("{0}")]
    Malformed(String),
    /// Keystone's 401: a method other than `token`.
    #[error("{0}")]
    UnsupportedMethod(String),
}

#[derive(Deserialize)]
struct Body {
    auth: Auth,
}

#[derive(Deserialize)]
struct Auth {
    identity: Identity,
    #[serde(default)]
    scope: Option<Value>,
}

#[derive(Deserialize)]
struct Identity {
    methods: Vec<String>,
    #[serde(default)]
    token: Option<TokenMethod>,
}

#[derive(Deserialize)]
struct TokenMethod {
    id: String,
}

#[derive(Deserialize)]
struct ProjectScope {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    domain: Option<DomainRef>,
}

#[derive(Deserialize)]
struct DomainRef {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

fn malformed(what: &str) -> RequestError {
    RequestError::Malformed(format!(
        "Invalid authentication request: {what}. Expected \
         {{\"auth\": {{\"identity\": {{\"methods\": [\"token\"], \"token\": {{\"id\": \"<token>\"}}}}, \
         \"scope\": {{\"project\": {{\"id\": \"<project id>\"}}}}}}}}."
    ))
}

pub fn parse(body: &[u8]) -> Result<TokenRequest, RequestError> {
    let body: Body = serde_json::from_slice(body).map_err(|e| {
        // Only the position: serde's message may quote a value, the token.
        malformed(&format!(
            "the body is not such a JSON object (at line {} column {})",
            e.line(),
            e.column()
        ))
    })?;
    let identity = body.auth.identity;
    if let Some(other) = identity.methods.iter().find(|m| *m != "token") {
        return Err(RequestError::UnsupportedMethod(format!(
            "Attempted to authenticate with an unsupported method: {other:?}. \
             shutoff's local identity service takes only the \"token\" method, with a \
             token made by `shutoff-admin token create`."
        )));
    }
    let Some(token) = identity.token.filter(|_| !identity.methods.is_empty()) else {
        return Err(malformed(
            "methods must be [\"token\"], with auth.identity.token.id",
        ));
    };
    let scope = match body.auth.scope {
        None | Some(Value::Null) => Scope::Default,
        Some(Value::String(s)) if s == "unscoped" => Scope::Other("an unscoped token"),
        Some(Value::Object(scope)) => {
            if scope.contains_key("domain") {
                Scope::Other("a domain")
            } else if scope.contains_key("system") {
                Scope::Other("the system")
            } else if scope.contains_key("OS-TRUST:trust") {
                Scope::Other("a trust")
            } else if let Some(project) = scope.get("project") {
                project_scope(project.clone())?
            } else {
                return Err(malformed("auth.scope names no project"));
            }
        }
        Some(_) => return Err(malformed("auth.scope is not an object")),
    };
    Ok(TokenRequest {
        token: token.id,
        scope,
    })
}

fn project_scope(project: Value) -> Result<Scope, RequestError> {
    let project: ProjectScope = serde_json::from_value(project)
        .map_err(|_| malformed("auth.scope.project is malformed"))?;
    if let Some(id) = project.id {
        return Ok(Scope::ProjectId(id));
    }
    let Some(name) = project.name else {
        return Err(malformed("auth.scope.project has neither id nor name"));
    };
    let domain = match project.domain {
        Some(DomainRef { id: Some(id), .. }) => Domain::Id(id),
        Some(DomainRef {
            name: Some(name), ..
        }) => Domain::Name(name),
        _ => {
            return Err(malformed(
                "a project scoped by name needs its domain (auth.scope.project.domain.id or .name)",
            ));
        }
    };
    Ok(Scope::ProjectName { name, domain })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_body(scope: &str) -> Vec<u8> {
        format!(
            r#"{{"auth": {{"identity": {{"methods": ["token"], "token": {{"id": "T"}}}}{scope}}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn keystoneauths_token_requests_parse() {
        let parsed = parse(&token_body("")).unwrap();
        assert_eq!(parsed.token, "T");
        assert_eq!(parsed.scope, Scope::Default);
        assert_eq!(
            parse(&token_body(r#", "scope": {"project": {"id": "p"}}"#))
                .unwrap()
                .scope,
            Scope::ProjectId("p".into())
        );
        assert_eq!(
            parse(&token_body(
                r#", "scope": {"project": {"name": "demo", "domain": {"name": "Default"}}}"#
            ))
            .unwrap()
            .scope,
            Scope::ProjectName {
                name: "demo".into(),
                domain: Domain::Name("Default".into())
            }
        );
        assert!(matches!(
            parse(&token_body(r#", "scope": {"domain": {"id": "default"}}"#))
                .unwrap()
                .scope,
            Scope::Other(_)
        ));
        assert!(matches!(
            parse(&token_body(r#", "scope": "unscoped""#))
                .unwrap()
                .scope,
            Scope::Other(_)
        ));
    }

    #[test]
    fn other_methods_and_shapes_are_refused_without_echoing_secrets() {
        let password = br#"{"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "u", "password": "hunter2"}}}}}"#;
        let err = parse(password).unwrap_err();
        assert!(matches!(err, RequestError::UnsupportedMethod(_)));
        assert!(!err.to_string().contains("hunter2"));
        for bad in [
            &b"not json"[..],
            br#"{"auth": {}}"#,
            br#"{"auth": {"identity": {"methods": [], "token": {"id": "secret-1"}}}}"#,
            br#"{"auth": {"identity": {"methods": ["token"]}}}"#,
            br#"{"auth": {"identity": {"methods": ["token"], "token": {"id": 5}}}}"#,
        ] {
            let err = parse(bad).unwrap_err();
            assert!(matches!(err, RequestError::Malformed(_)), "{err}");
            assert!(!err.to_string().contains("secret-1"));
        }
        assert!(matches!(
            parse(&token_body(r#", "scope": {"project": {"name": "demo"}}"#)),
            Err(RequestError::Malformed(_))
        ));
    }
}
