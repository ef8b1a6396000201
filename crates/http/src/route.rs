//! A shard's HTTP routing: a request for an account another shard owns reaches that shard.
//!
//! By default the node forwards it, one hop, and answers with the owner's answer (status,
//! headers, body): a client, the console above all, needs to know one address only, and the
//! owner decides exactly as if called directly (the same idempotency, the same checks). The
//! forward authenticates with this node's own `cluster` token and names the caller this node
//! authenticated (`Bindledger-On-Behalf-Of`: the caller's name and roles), so the owner
//! applies the caller's roles, a console session's included, which the owner does not hold.
//! A request forwarded once is never forwarded again: a map that changed in between answers
//! `421 misdirected` instead, naming the owner, as every request does with `cluster.forward =
//! false` (or when no `cluster` token is configured).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::config::Role;
use crate::state::{read_body, ApiError, AppState, Caller, ClusterRoute, Principal};

/// Marks a forwarded request (its value: the forwarding shard).
pub const FORWARDED: &str = "bindledger-forwarded";
/// Who a forwarded request acts as: the caller's name (hex of its UTF-8) and roles.
pub const ON_BEHALF_OF: &str = "bindledger-on-behalf-of";
/// On every answer of an account's route on a shard: the shard that answered.
pub const SHARD: &str = "bindledger-shard";

/// The largest answer a forward relays (an owner's pages are bounded far below it).
const ANSWER_MAX: usize = 64 << 20;

const MISDIRECTED: &str =
    "this account belongs to another shard of the cluster; send the request to the shard named in owner";

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Writer => "writer",
        Role::Reader => "reader",
        Role::Auditor => "auditor",
        Role::Security => "security",
        Role::Cluster => "cluster",
        Role::Privacy => "privacy",
    }
}

/// The principal a `cluster` token's request acts as, from its `Bindledger-On-Behalf-Of`
/// (`<hex name>;role+role`); `None` when the header is absent or does not read. The roles
/// named never include `cluster` (a forward cannot forward again under its own authority).
pub(crate) fn on_behalf_of(headers: &HeaderMap) -> Option<Option<Principal>> {
    let value = headers.get(ON_BEHALF_OF)?;
    let parsed = (|| {
        let (name, roles) = value.to_str().ok()?.split_once(';')?;
        let name = String::from_utf8(hex::decode(name).ok()?).ok()?;
        let roles = roles
            .split('+')
            .filter(|r| !r.is_empty())
            .map(Role::parse)
            .collect::<Option<Vec<Role>>>()?
            .into_iter()
            .filter(|r| *r != Role::Cluster)
            .collect();
        Some(Principal { name, roles })
    })();
    Some(parsed)
}

fn behalf_value(p: &Principal) -> String {
    let roles: Vec<&str> = p
        .roles
        .iter()
        .copied()
        .filter(|r| *r != Role::Cluster)
        .map(role_name)
        .collect();
    format!("{};{}", hex::encode(p.name.as_bytes()), roles.join("+"))
}

/// The account a path names (`/v1/accounts/{account}/...`), percent-decoded.
fn account_of(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v1/accounts/")?;
    let segment = rest.split('/').next().filter(|s| !s.is_empty())?;
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn misdirected(owner: &str, url: &str) -> Response {
    let body =
        json!({"error": {"code": "misdirected", "message": MISDIRECTED, "field": null}, "shard": owner, "owner": url});
    (StatusCode::MISDIRECTED_REQUEST, Json(body)).into_response()
}

/// The middleware (after the gate, so the caller is known, and before any body is read).
pub(crate) async fn to_owner(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(route) = s.extras.cluster.as_ref() else {
        return next.run(req).await;
    };
    let Some(account) = account_of(req.uri().path()) else {
        return next.run(req).await;
    };
    let Some((owner, url)) = s.ledger.ownership().owner_elsewhere(&account) else {
        let mut r = next.run(req).await;
        if let Ok(v) = HeaderValue::from_str(&route.shard) {
            r.headers_mut().insert(SHARD, v);
        }
        return r;
    };
    let caller = req.extensions().get::<Caller>().map(|c| c.0.clone());
    let (Some(token), Some(caller), true, false) = (
        route.token.as_ref(),
        caller,
        route.forward,
        req.headers().contains_key(FORWARDED),
    ) else {
        s.ledger.metrics().count_rejected("misdirected");
        return misdirected(&owner, &url);
    };
    match forward(&s, route, token, &caller, &url, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// Request headers a forward does not copy: its own credential replaces the caller's, and the
/// connection's own headers are the client's business.
const NOT_COPIED: &[HeaderName] = &[
    header::HOST,
    header::AUTHORIZATION,
    header::COOKIE,
    header::CONNECTION,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
];

async fn forward(
    s: &AppState,
    route: &ClusterRoute,
    token: &str,
    caller: &Principal,
    url: &str,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let body = read_body(s, body).await?;
    let target = format!(
        "{}{}",
        url.trim_end_matches('/'),
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut out = route
        .client
        .request(parts.method.clone(), target)
        .bearer_auth(token)
        .header(ON_BEHALF_OF, behalf_value(caller))
        .header(FORWARDED, route.shard.as_str())
        .body(body);
    for (name, value) in &parts.headers {
        if !NOT_COPIED.contains(name) && name.as_str() != ON_BEHALF_OF && name.as_str() != FORWARDED {
            out = out.header(name, value);
        }
    }
    let unavailable = || {
        s.ledger.metrics().count_rejected("owner_unavailable");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "owner_unavailable",
            "the shard that owns this account did not answer in time; retry (with the same idempotency key for a command)",
        )
    };
    let mut answer = out.send().await.map_err(|_| unavailable())?;
    let mut bytes = Vec::new();
    while let Some(chunk) = answer.chunk().await.map_err(|_| unavailable())? {
        if bytes.len() + chunk.len() > ANSWER_MAX {
            return Err(unavailable());
        }
        bytes.extend_from_slice(&chunk);
    }
    let mut r = Response::new(Body::from(bytes));
    *r.status_mut() = answer.status();
    for (name, value) in answer.headers() {
        if ![header::CONNECTION, header::TRANSFER_ENCODING, header::CONTENT_LENGTH].contains(name) {
            r.headers_mut().append(name, value.clone());
        }
    }
    if let Ok(v) = HeaderValue::from_str(&route.shard) {
        r.headers_mut().insert(FORWARDED, v);
    }
    Ok(r)
}

/// `GET /v1/cluster/status`: every shard's `/v1/status`, asked by this node (its `cluster`
/// token, on behalf of the caller), each within 3 s: what the console's glance shows.
pub(crate) async fn cluster_status(s: &AppState, caller: &Principal) -> Option<serde_json::Value> {
    let (me, map) = s.ledger.ownership().map()?;
    let route = s.extras.cluster.as_ref()?;
    let asks = map.shards.iter().map(|(id, e)| {
        let slots = map.slots_of(id).len();
        let request = route.token.as_ref().map(|token| {
            route
                .client
                .get(format!("{}/v1/status", e.url))
                .bearer_auth(token)
                .header(ON_BEHALF_OF, behalf_value(caller))
                .header(FORWARDED, route.shard.as_str())
                .timeout(Duration::from_secs(3))
                .send()
        });
        async move {
            let answer = match request {
                None => Err("this node has no cluster token to ask with".to_owned()),
                Some(r) => match r.await {
                    Ok(a) if a.status().is_success() => match a.bytes().await {
                        Ok(b) => serde_json::from_slice::<serde_json::Value>(&b)
                            .map_err(|_| "an answer that is not JSON".to_owned()),
                        Err(_) => Err("the answer broke off".to_owned()),
                    },
                    Ok(a) => Err(format!("answered {}", a.status())),
                    Err(e) if e.is_timeout() => Err("no answer within 3 s".to_owned()),
                    Err(_) => Err("unreachable".to_owned()),
                },
            };
            let mut row = json!({"shard": id, "url": e.url, "slots": slots});
            match answer {
                Ok(v) => {
                    row["answered"] = json!(true);
                    row["status"] = v["health"]["status"].clone();
                    row["role"] = v["health"]["role"].clone();
                    row["events"] = v["health"]["events"].clone();
                    row["epoch"] = v["health"]["epoch"].clone();
                    row["relay_lag_events"] = v["relays"]["events"]["lag_events"].clone();
                    row["map_version"] = v["cluster"]["map_version"].clone();
                }
                Err(why) => {
                    row["answered"] = json!(false);
                    row["error"] = json!(why);
                }
            }
            row
        }
    });
    let shards = futures_util::future::join_all(asks).await;
    Some(json!({"shard": me, "map_version": map.version, "shards": shards}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_account_is_read_from_the_path_percent_decoded() {
        assert_eq!(account_of("/v1/accounts/alice/payments").as_deref(), Some("alice"));
        assert_eq!(account_of("/v1/accounts/a%2Fb%20c/bindings").as_deref(), Some("a/b c"));
        assert_eq!(account_of("/v1/accounts/%E5%BC%A0/bindings").as_deref(), Some("张"));
        assert_eq!(account_of("/v1/accounts//bindings"), None);
        assert_eq!(account_of("/v1/accounts/%zz/bindings"), None);
        assert_eq!(account_of("/v1/alerts"), None);
    }

    #[test]
    fn the_caller_crosses_a_forward_without_the_cluster_role() {
        let p = Principal {
            name: "客服 7".into(),
            roles: vec![Role::Reader, Role::Security, Role::Cluster],
        };
        let mut h = HeaderMap::new();
        h.insert(ON_BEHALF_OF, HeaderValue::from_str(&behalf_value(&p)).unwrap());
        let back = on_behalf_of(&h).unwrap().unwrap();
        assert_eq!(back.name, "客服 7");
        assert_eq!(back.roles, vec![Role::Reader, Role::Security]);
        h.insert(ON_BEHALF_OF, HeaderValue::from_static("6869;reader+cluster"));
        assert_eq!(on_behalf_of(&h).unwrap().unwrap().roles, vec![Role::Reader]);
        h.insert(ON_BEHALF_OF, HeaderValue::from_static("zz;reader"));
        assert!(on_behalf_of(&h).unwrap().is_none());
        h.insert(ON_BEHALF_OF, HeaderValue::from_static("6869;root"));
        assert!(on_behalf_of(&h).unwrap().is_none());
        assert!(on_behalf_of(&HeaderMap::new()).is_none());
    }
}
