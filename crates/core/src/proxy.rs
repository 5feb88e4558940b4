//! Proxied calls: what is forwarded upstream, how credentials are kept, and what the
//! client's callback receives.
//!
//! A proxied call is an ordinary task whose work is a [`ProxyWork`]: each attempt
//! round calls the upstream (or each route target in order); the outcome is then
//! delivered to the callback by a follow-up message of the same task
//! ([`ProxyCallbackWork`]) with its own retries and dead-lettering. The ingress runs
//! the same rounds in-process for synchronous calls.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use tern_proto::Message;
use tern_proto::v1::{
    HttpHeader, HttpHeaders, ProxyCallbackWork, ProxyTarget, ProxyWork, Task, task::Work,
};

use crate::executor::{AttemptResult, BodyLimit, HttpRequest};
use crate::round::{Round, Target};
use crate::sealing::{SealError, Sealer};
use crate::url_guard::FailureKind;

/// Tern's control headers on a proxy request; never forwarded.
pub const CONTROL_HEADERS: &[&str] = &[
    "x-target-url",
    "x-route-key",
    "x-webhook-callback",
    "x-retry-count",
    "x-retry-delay",
    "x-proxy-timeout",
    "x-proxy-idempotency-key",
    "x-identity-key",
];

/// Hop-by-hop headers (RFC 9110 §7.6.1) and those the HTTP client sets itself.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "expect",
];

/// Why a proxied job cannot be turned into requests.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// This process has no `proxy.secret_key`.
    #[error("proxy.secret_key is not configured on this service")]
    NoKey,
    /// A sealed header blob does not open.
    #[error("sealed headers: {0}")]
    Sealed(#[from] SealError),
    /// The opened blob is not a header list (a producer bug).
    #[error("sealed headers are not a header list")]
    Corrupt,
}

/// True for headers no one may have Tern send upstream: hop-by-hop headers, Tern's
/// control headers and `X-Tern-*` (lower-case `name`).
pub fn is_reserved(name: &str) -> bool {
    HOP_BY_HOP.contains(&name) || name.starts_with("x-tern-") || CONTROL_HEADERS.contains(&name)
}

fn is_hop_by_hop(name: &str, connection_listed: &[String]) -> bool {
    HOP_BY_HOP.contains(&name) || connection_listed.iter().any(|c| c == name)
}

fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The client's end-to-end headers, as sent upstream: hop-by-hop headers, Tern's
/// control headers, `X-Tern-*` and the client's `Authorization` (its Tern API key)
/// are left out.
pub fn forwarded_headers(incoming: &HeaderMap) -> HeaderMap {
    let listed = connection_listed(incoming);
    let mut out = HeaderMap::new();
    for (name, value) in incoming {
        let n = name.as_str();
        if is_reserved(n) || is_hop_by_hop(n, &listed) || n == "authorization" {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// An upstream's response headers as returned to a synchronous caller: hop-by-hop
/// headers are the connection's, not the response's.
pub fn response_headers(upstream: &HeaderMap) -> HeaderMap {
    let listed = connection_listed(upstream);
    let mut out = HeaderMap::new();
    for (name, value) in upstream {
        if !is_hop_by_hop(name.as_str(), &listed) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Seals `headers` for `tenant_id`.
pub fn seal_headers(sealer: &Sealer, tenant_id: &str, headers: &HeaderMap) -> Vec<u8> {
    let list = HttpHeaders {
        headers: headers
            .iter()
            .map(|(name, value)| HttpHeader {
                name: name.as_str().to_string(),
                value: Bytes::copy_from_slice(value.as_bytes()),
            })
            .collect(),
    };
    sealer.seal(tenant_id, &list.encode_to_vec())
}

/// Opens what [`seal_headers`] sealed; empty input is no headers.
pub fn open_headers(
    sealer: Option<&Sealer>,
    tenant_id: &str,
    sealed: &[u8],
) -> Result<HeaderMap, ProxyError> {
    let mut headers = HeaderMap::new();
    if sealed.is_empty() {
        return Ok(headers);
    }
    let sealer = sealer.ok_or(ProxyError::NoKey)?;
    let plain = sealer.open(tenant_id, sealed)?;
    let list = HttpHeaders::decode(plain.as_slice()).map_err(|_| ProxyError::Corrupt)?;
    for h in list.headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(&h.value),
        ) else {
            return Err(ProxyError::Corrupt);
        };
        headers.append(name, value);
    }
    Ok(headers)
}

/// The round targets of `work`: the client's headers (with `Authorization` from
/// `X-Identity-Key`), overridden per target by the route target's own headers.
pub fn targets(
    work: &ProxyWork,
    tenant_id: &str,
    sealer: Option<&Sealer>,
    default_timeout: Duration,
    max_response_bytes: usize,
) -> Result<Vec<Target>, ProxyError> {
    let method =
        reqwest::Method::from_bytes(work.method.as_bytes()).unwrap_or(reqwest::Method::POST);
    let common = open_headers(sealer, tenant_id, &work.sealed_headers)?;
    work.targets
        .iter()
        .map(|t: &ProxyTarget| {
            let mut headers = common.clone();
            for (name, value) in &open_headers(sealer, tenant_id, &t.sealed_headers)? {
                headers.insert(name.clone(), value.clone());
            }
            Ok(Target {
                request: HttpRequest {
                    method: method.clone(),
                    url: t.url.clone(),
                    headers,
                    body: work.body.clone(),
                    timeout: if t.timeout_ms > 0 {
                        Duration::from_millis(t.timeout_ms)
                    } else {
                        default_timeout
                    },
                    keep_body: BodyLimit::Whole(max_response_bytes),
                },
                retries: t.retries,
            })
        })
        .collect()
}

/// A description of the upstream for messages: its URL, or each route target's.
pub fn upstream_label(work: &ProxyWork) -> String {
    work.targets
        .iter()
        .map(|t| t.url.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The status a gateway reports for a call that got no response.
pub fn gateway_status(kind: FailureKind) -> u16 {
    match kind {
        FailureKind::Timeout => 504,
        _ => 502,
    }
}

/// The status of a failed round: the last HTTP status, or 502/504 without one.
pub fn failed_status(round: &Round) -> u16 {
    match round.calls.last().map(|(_, o)| &o.result) {
        Some(AttemptResult::Response { status, .. }) => *status,
        Some(AttemptResult::Failed { kind, .. }) => gateway_status(*kind),
        _ => 502,
    }
}

#[derive(Serialize)]
struct TargetError<'a> {
    url: &'a str,
    status_code: Option<u16>,
    error: String,
}

#[derive(Serialize)]
struct Failure<'a> {
    error: &'static str,
    job_id: &'a str,
    status_code: u16,
    message: String,
    errors: Vec<TargetError<'a>>,
}

/// The body the callback gets when every attempt failed:
/// `{"error":"upstream_failed","job_id","status_code","message","errors":[…]}`, where
/// `errors` holds each target's last error.
pub fn failure_payload(job_id: &str, work: &ProxyWork, last_round: &Round) -> Vec<u8> {
    let errors = last_round
        .last_calls()
        .map(|(url, outcome)| TargetError {
            url,
            status_code: outcome.status(),
            error: match &outcome.result {
                AttemptResult::Response { status, .. } => format!("HTTP {status}"),
                AttemptResult::Failed { kind, message } => format!("{}: {message}", kind.as_str()),
                AttemptResult::Disabled { message } => message.clone(),
            },
        })
        .collect();
    serde_json::to_vec(&Failure {
        error: "upstream_failed",
        job_id,
        status_code: failed_status(last_round),
        message: format!("All retry attempts failed for {}", upstream_label(work)),
        errors,
    })
    .unwrap_or_default()
}

/// The follow-up message that delivers a proxied call's outcome to its callback:
/// the winning response of `round`, or the failure payload when `failure` is set.
/// Same task id, so its attempts join the proxied call's record.
pub fn callback_task(task: &Task, work: &ProxyWork, round: &Round, failure: Option<&str>) -> Task {
    let callback = match (failure, round.winning()) {
        (None, Some((_, outcome))) => {
            let (status, content_type, body) = match &outcome.result {
                AttemptResult::Response {
                    status,
                    headers,
                    body,
                } => (
                    *status,
                    headers
                        .get(header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("application/octet-stream")
                        .to_string(),
                    body.clone(),
                ),
                _ => (0, String::new(), Bytes::new()),
            };
            ProxyCallbackWork {
                url: work.callback_url.clone(),
                body,
                content_type,
                upstream_status: u32::from(status),
                upstream_error: String::new(),
            }
        }
        (failure, _) => ProxyCallbackWork {
            url: work.callback_url.clone(),
            body: failure_payload(&task.id, work, round).into(),
            content_type: "application/json".into(),
            upstream_status: u32::from(failed_status(round)),
            upstream_error: format!(
                "upstream_failed: {}",
                failure.unwrap_or("no target answered 2xx")
            ),
        },
    };
    Task {
        id: task.id.clone(),
        tenant_id: task.tenant_id.clone(),
        tier: task.tier,
        queue: task.queue.clone(),
        created_at_ms: crate::now_ms(),
        retry: task.retry,
        // The worker reads the record first: the upstream phase moved it on.
        record_revision: 0,
        record_deferred: false,
        callback_deadline_ms: 0,
        notify_url: task.notify_url.clone(),
        not_before_ms: 0,
        schedule_id: String::new(),
        schedule_slot_ms: 0,
        traceparent: task.traceparent.clone(),
        work: Some(Work::ProxyCallback(callback)),
    }
}

/// `Nats-Msg-Id` of a proxied call's callback message: a repeated publish (after a
/// crash between publish and ack) is dropped by JetStream's duplicate window.
pub fn callback_message_id(task_id: &str) -> String {
    format!("proxy-callback:{task_id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::AttemptOutcome;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn forwards_only_end_to_end_client_headers() {
        let incoming = headers(&[
            ("authorization", "Bearer tern-api-key"),
            ("x-identity-key", "Bearer sk_live"),
            ("x-target-url", "https://api.example.com"),
            ("x-tern-trace", "1"),
            ("connection", "keep-alive, x-drop-me"),
            ("x-drop-me", "1"),
            ("host", "tern"),
            ("content-length", "3"),
            ("content-type", "application/json"),
            ("idempotency-key", "order-1"),
            ("accept", "a"),
            ("accept", "b"),
        ]);
        let out = forwarded_headers(&incoming);
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "idempotency-key", "accept"]);
        assert_eq!(out.get_all("accept").iter().count(), 2);
    }

    #[test]
    fn headers_seal_and_reopen_and_targets_override_them() {
        let sealer = Sealer::from_secret("k");
        let client = headers(&[("authorization", "Bearer sk_client"), ("accept", "x")]);
        let provider = headers(&[("authorization", "Bearer sk_provider")]);
        let work = ProxyWork {
            method: "PUT".into(),
            targets: vec![
                ProxyTarget {
                    url: "http://a".into(),
                    ..Default::default()
                },
                ProxyTarget {
                    url: "http://b".into(),
                    sealed_headers: seal_headers(&sealer, "acme", &provider).into(),
                    timeout_ms: 250,
                    retries: 1,
                },
            ],
            sealed_headers: seal_headers(&sealer, "acme", &client).into(),
            ..Default::default()
        };
        let targets = targets(&work, "acme", Some(&sealer), Duration::from_secs(3), 10).unwrap();
        assert_eq!(targets[0].request.method, reqwest::Method::PUT);
        assert_eq!(
            targets[0].request.headers["authorization"],
            "Bearer sk_client"
        );
        assert_eq!(targets[0].request.timeout, Duration::from_secs(3));
        assert_eq!(
            targets[1].request.headers["authorization"],
            "Bearer sk_provider"
        );
        assert_eq!(targets[1].request.headers["accept"], "x");
        assert_eq!(targets[1].request.timeout, Duration::from_millis(250));
        assert_eq!(targets[1].retries, 1);
        assert!(matches!(
            super::targets(&work, "acme", None, Duration::from_secs(3), 10),
            Err(ProxyError::NoKey)
        ));
        assert!(matches!(
            super::targets(&work, "globex", Some(&sealer), Duration::from_secs(3), 10),
            Err(ProxyError::Sealed(_))
        ));
    }

    #[test]
    fn failure_payload_has_the_documented_shape() {
        let work = ProxyWork {
            targets: vec![ProxyTarget {
                url: "http://up/x".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let round = Round {
            calls: vec![(
                "http://up/x".into(),
                AttemptOutcome::refused(FailureKind::Timeout, "timed out"),
            )],
            winner: None,
            last_per_target: vec![0],
        };
        let json: serde_json::Value =
            serde_json::from_slice(&failure_payload("job-1", &work, &round)).unwrap();
        assert_eq!(json["error"], "upstream_failed");
        assert_eq!(json["job_id"], "job-1");
        assert_eq!(json["status_code"], 504);
        assert_eq!(json["message"], "All retry attempts failed for http://up/x");
        assert_eq!(json["errors"][0]["error"], "timeout: timed out");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Header names clients send, Tern's own among them, in any case.
    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(
                CONTROL_HEADERS
                    .iter()
                    .chain(HOP_BY_HOP)
                    .chain(&["authorization", "x-tern-job-id", "content-type", "x-custom"])
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
            ),
            "[a-z][a-z0-9-]{0,12}",
        ]
        .prop_flat_map(|n| {
            prop::collection::vec(any::<bool>(), n.len()).prop_map(move |upper| {
                n.chars()
                    .zip(upper)
                    .map(|(c, u)| if u { c.to_ascii_uppercase() } else { c })
                    .collect()
            })
        })
    }

    proptest! {
        /// Nothing Tern reads or owns, and no hop-by-hop header (also those the
        /// client's `Connection` lists), travels upstream; everything else does.
        #[test]
        fn only_end_to_end_headers_are_forwarded(
            pairs in prop::collection::vec((name(), prop::collection::vec(any::<u8>(), 0..20)), 0..12),
            connection in prop::collection::vec("[a-zA-Z-]{1,10}", 0..3),
        ) {
            let mut incoming = HeaderMap::new();
            for (n, v) in &pairs {
                if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n.as_bytes()), HeaderValue::from_bytes(v)) {
                    incoming.append(n, v);
                }
            }
            if let Ok(v) = HeaderValue::from_str(&connection.join(", ")) {
                incoming.append(header::CONNECTION, v);
            }
            let listed = connection_listed(&incoming);
            let out = forwarded_headers(&incoming);
            for name in out.keys() {
                let n = name.as_str();
                prop_assert!(!is_reserved(n) && !is_hop_by_hop(n, &listed) && n != "authorization", "{n}");
            }
            for (name, _) in &incoming {
                let n = name.as_str();
                if !is_reserved(n) && !is_hop_by_hop(n, &listed) && n != "authorization" {
                    prop_assert_eq!(out.get_all(name).iter().count(), incoming.get_all(name).iter().count());
                }
            }
            let back = response_headers(&incoming);
            prop_assert!(back.keys().all(|n| !is_hop_by_hop(n.as_str(), &listed)));
        }

        /// Sealed headers from a message are opened or refused, whatever the bytes.
        #[test]
        fn opening_arbitrary_bytes_never_panics(sealed in prop::collection::vec(any::<u8>(), 0..200)) {
            let sealer = Sealer::from_secret("a passphrase of at least thirty-two characters");
            let _ = open_headers(Some(&sealer), "tenant", &sealed);
            let _ = open_headers(None, "tenant", &sealed);
        }

        #[test]
        fn sealed_headers_round_trip(
            pairs in prop::collection::vec(("[a-z][a-z0-9-]{0,10}", "[ -~]{0,20}"), 0..6),
        ) {
            let mut headers = HeaderMap::new();
            for (n, v) in &pairs {
                headers.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
            }
            let sealer = Sealer::from_secret("a passphrase of at least thirty-two characters");
            let sealed = seal_headers(&sealer, "t", &headers);
            prop_assert_eq!(open_headers(Some(&sealer), "t", &sealed).unwrap(), headers);
            prop_assert!(sealed.is_empty() || open_headers(Some(&sealer), "other", &sealed).is_err());
        }
    }
}
