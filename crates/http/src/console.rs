//! The security console at `/console`: a page, its script and its style, served from the
//! binary (no CDN, no external font, no build step), and the sessions it signs in with.
//!
//! **Sign-in.** The page posts a token to `POST /console/session`; the answer sets an
//! `HttpOnly`, `SameSite=Strict` cookie naming a session held here (the token is not kept by
//! the browser) and gives the page the session's CSRF token, which it holds in memory only.
//! The session has the token's roles and name; every API call the page makes is checked against
//! them exactly as a bearer token is.
//!
//! **CSRF.** A request is authenticated by exactly one credential (see
//! `server::authenticate`): a request with an `Authorization` header by that header alone (a
//! bearer token, which browsers do not send on their own, so it needs no CSRF token; any other
//! scheme is refused, never taken for the cookie), one without by the cookie. A request
//! authenticated by the cookie that changes anything (any method but GET and HEAD) must carry
//! `X-CSRF-Token` equal to its session's; otherwise `403 csrf`, before the body is read.
//!
//! **Sessions** are bounded per token (`SESSIONS_PER_TOKEN`): a new sign-in beyond it ends
//! the same token's least recently used session, never another token's.
//!
//! **Headers.** The pages are served with a strict Content-Security-Policy (`'self'` only, no
//! inline script or style, no framing), `nosniff`, no referrer, and `no-store`.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::sync::Arc;

use crate::state::{read_body, same, ApiError, ApiResult, AppState, Principal, SESSION_IDLE};

/// The session cookie's name.
pub const COOKIE: &str = "bindledger_session";
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; font-src 'none'; object-src 'none'; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// The session id in the request's cookie, if any.
pub fn cookie_session(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The CSRF rule for a request signed in by the cookie of a session whose token is `csrf`.
pub(super) fn check_csrf(headers: &HeaderMap, csrf: &str) -> ApiResult<()> {
    let sent = headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or("");
    if same(sent.as_bytes(), csrf.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf",
            "a request signed in by the console's cookie needs its X-CSRF-Token",
        ))
    }
}

fn page_headers(content_type: &'static str) -> [(header::HeaderName, HeaderValue); 6] {
    [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ]
}

pub async fn page() -> Response {
    (
        page_headers("text/html; charset=utf-8"),
        include_str!("console/index.html"),
    )
        .into_response()
}

pub async fn script() -> Response {
    (
        page_headers("text/javascript; charset=utf-8"),
        include_str!("console/app.js"),
    )
        .into_response()
}

pub async fn style() -> Response {
    (page_headers("text/css; charset=utf-8"), include_str!("console/app.css")).into_response()
}

fn who(p: &Principal, csrf: &str) -> serde_json::Value {
    json!({"name": p.name, "roles": p.roles, "csrf": csrf})
}

/// `GET /console/session`: who is signed in (a reload of the page keeps its session).
pub async fn current(State(s): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult<Response> {
    match cookie_session(&headers).and_then(|id| s.sessions.find(id)) {
        Some((p, csrf)) => Ok(Json(who(&p, &csrf)).into_response()),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "not signed in",
        )),
    }
}

/// `POST /console/session` `{token}`: signs in; sets the session cookie. The body is read as
/// every body is (bounded in size and time, [`crate::state::read_body`]), and taken as a
/// command's fields are (one JSON object, no key twice, nothing else in it).
pub async fn sign_in(State(s): State<Arc<AppState>>, req: axum::extract::Request) -> ApiResult<Response> {
    let bytes = read_body(&s, req.into_body()).await?;
    let token: String = crate::domain::command::Fields::parse(&bytes).and_then(|mut f| {
        let token = f.req("token")?;
        f.finish()?;
        Ok(token)
    })?;
    let principal = s
        .principal_of_token(&token)
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", "unknown token"))?;
    let (id, csrf) = s.sessions.open(principal.clone());
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
        SESSION_IDLE.as_secs(),
        if s.console_secure_cookie() { "; Secure" } else { "" }
    );
    let mut r = Json(who(&principal, &csrf)).into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("hex and ASCII"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// `DELETE /console/session`: signs out (needs the CSRF token, as every change does).
pub async fn sign_out(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie_session(&headers) {
        s.sessions.close(id);
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")).expect("ASCII"),
    );
    r
}

#[cfg(test)]
mod tests {
    /// The keys of the page's Chinese table (`const ZH = { "english": "中文", ... }`).
    fn chinese_keys(js: &str) -> std::collections::BTreeSet<String> {
        let start = js.find("const ZH = {").expect("the page has a Chinese table");
        let end = start + js[start..].find("\n};").expect("the table ends");
        js[start..end]
            .lines()
            .filter_map(|l| l.trim().strip_prefix('"'))
            .filter_map(|l| l.split_once("\": \"").map(|(k, _)| k.to_owned()))
            .collect()
    }

    /// The English texts the page and its frame give `t` (`t("...")`, `data-t="..."`,
    /// `data-t-placeholder="..."`) as literals.
    fn texts(js: &str, html: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (text, open) in [(js, "t(\""), (html, "data-t=\""), (html, "data-t-placeholder=\"")] {
            let mut rest = text;
            while let Some(i) = rest.find(open) {
                // `t(` alone: not the end of another name (`list(`, `alert(`).
                let before = rest[..i].chars().last();
                rest = &rest[i + open.len()..];
                if open == "t(\"" && before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.') {
                    continue;
                }
                let end = rest.find('"').expect("a closed string");
                out.push(rest[..end].to_owned());
                rest = &rest[end..];
            }
        }
        out
    }

    /// Every text of the page has its Chinese: a text added in English only fails here (the
    /// Chromium test finds those made at run time, such as a status's name).
    #[test]
    fn every_text_of_the_page_is_in_the_chinese_table() {
        let js = include_str!("console/app.js");
        let html = include_str!("console/index.html");
        let keys = chinese_keys(js);
        assert!(keys.len() > 150, "the table was read: {}", keys.len());
        let texts = texts(js, html);
        assert!(texts.iter().any(|t| t == "Download CSV") && texts.iter().any(|t| t == "Sign in"));
        assert!(texts.len() > 150, "the texts were found: {}", texts.len());
        let missing: Vec<_> = texts.iter().filter(|t| !keys.contains(*t)).collect();
        assert!(missing.is_empty(), "no Chinese for: {missing:?}");
    }
}
