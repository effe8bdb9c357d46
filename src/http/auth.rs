//! The bearer-token check at the edge (`--tokens-file`; the tokens and
//! scopes themselves are `crate::access`).
//!
//! Without a tokens file the service serves the contract as it is, to
//! anyone. With one, every route but the probes, the API description and
//! the analysts' page (which asks for a token and sends it with its calls)
//! needs `Authorization: Bearer TOKEN` whose token has the route's scope:
//! 401 (with `WWW-Authenticate: Bearer`) when the token is missing or
//! unknown, 403 when its scope is missing.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::json_error;
pub use crate::access::{Scope, Tokens};

/// The scope a route needs, or `None` for the open ones (probes, the
/// API description, the analysts' page and its files, which hold no
/// data). Unknown routes need a valid token of any scope, so a stranger
/// learns nothing about which paths exist.
pub fn required_scope(method: &Method, route: Option<&str>) -> Option<Option<Scope>> {
    let Some(route) = route else {
        return Some(None); // unmatched: a token, any scope
    };
    if matches!(
        route,
        "/livez" | "/readyz" | "/health" | "/openapi.json" | "/" | "/ui/{file}"
    ) || route == "/docs"
        || route.starts_with("/docs/")
    {
        return None;
    }
    let scope = match (method, route) {
        (_, "/metrics") => Scope::Admin,
        (&Method::POST, "/imports") | (&Method::PATCH, _) => Scope::Write,
        (&Method::DELETE, _) => Scope::Delete,
        _ => Scope::Read,
    };
    Some(Some(scope))
}

/// The middleware: checks the bearer token of every protected route and
/// records the token's name in the request's log line.
pub async fn require_token(
    State(tokens): State<Arc<Tokens>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let Some(needed) = required_scope(request.method(), route.as_deref()) else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        });
    let Some(presented) = presented else {
        return unauthorized(
            "this service needs a token: send Authorization: Bearer TOKEN",
            false,
        );
    };
    let Some((name, scopes)) = tokens.identify(&presented) else {
        return unauthorized("the bearer token is not known to this service", true);
    };
    tracing::Span::current().record("token", name.as_str());
    if let Some(scope) = needed
        && !scopes.contains(&scope)
    {
        let body = serde_json::json!({"error": {
            "code": "forbidden",
            "message": format!("token {name} lacks the {scope} scope this request needs"),
        }});
        return json_error(StatusCode::FORBIDDEN, "forbidden", &body);
    }
    next.run(request).await
}

fn unauthorized(message: &str, presented: bool) -> Response {
    let body = serde_json::json!({"error": {"code": "unauthorized", "message": message}});
    let mut response = json_error(StatusCode::UNAUTHORIZED, "unauthorized", &body);
    let challenge = if presented {
        r#"Bearer realm="gifts", error="invalid_token""#
    } else {
        r#"Bearer realm="gifts""#
    };
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_the_scope_of_what_they_do() {
        let cases = [
            (Method::POST, "/imports", Some(Some(Scope::Write))),
            (Method::GET, "/imports", Some(Some(Scope::Read))),
            (
                Method::DELETE,
                "/imports/{import_id}",
                Some(Some(Scope::Delete)),
            ),
            (
                Method::PATCH,
                "/imports/{import_id}/citizens/{citizen_id}",
                Some(Some(Scope::Write)),
            ),
            (
                Method::GET,
                "/imports/{import_id}/citizens",
                Some(Some(Scope::Read)),
            ),
            (
                Method::GET,
                "/imports/{import_id}/citizens/birthdays",
                Some(Some(Scope::Read)),
            ),
            (
                Method::GET,
                "/imports/{import_id}/towns/stat/percentile/age",
                Some(Some(Scope::Read)),
            ),
            (Method::GET, "/metrics", Some(Some(Scope::Admin))),
            (Method::GET, "/health", None),
            (Method::GET, "/livez", None),
            (Method::GET, "/readyz", None),
            (Method::GET, "/openapi.json", None),
            (Method::GET, "/docs/", None),
            (Method::GET, "/", None),
            (Method::GET, "/ui/{file}", None),
        ];
        for (method, route, want) in cases {
            assert_eq!(
                required_scope(&method, Some(route)),
                want,
                "{method} {route}"
            );
        }
        assert_eq!(
            required_scope(&Method::GET, None),
            Some(None),
            "unknown paths need a token"
        );
    }
}
