//! `/v1/proxy` (and `/` with `X-Target-URL` or `X-Route-Key`): call an upstream for
//! the client, with retries.
//!
//! With `X-Webhook-Callback` (or `?webhook=`) the call becomes a task: `202` with its
//! `job_id` at once, the worker calls the upstream and delivers the outcome to the
//! callback. Without one the ingress makes the call itself with the same rounds and
//! retry decisions, and answers with the upstream's response as it came.
//!
//! Every header except Tern's own travels on to the upstream, sealed at rest;
//! `X-Identity-Key` becomes the upstream's `Authorization`. Nothing here logs a
//! header value.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tern_core::duration;
use tern_core::executor::AttemptResult;
use tern_core::idempotency;
use tern_core::policy;
use tern_core::proxy::{self as proxy_work, failed_status, forwarded_headers, upstream_label};
use tern_core::retry::{self, Receiver, Step};
use tern_core::round;
use tern_core::tenants::Tenant;
use tern_core::trace_context;
use tern_core::url_guard::UrlGuard;
use tern_proto::v1::{ProxyTarget, ProxyWork, RetryPolicy, Task, task::Work};

use crate::auth::Authenticated;
use crate::error::{ApiError, ErrorBody};
use crate::idempotent::{self, Outcome};
use crate::state::AppState;
use tracing::Instrument;

/// The queue proxied calls run on: its policy (`PUT /v1/queues/proxy`) sets the
/// defaults the control headers override.
pub const PROXY_QUEUE: &str = "proxy";

/// Longest accepted `X-Identity-Key`.
const MAX_IDENTITY_LEN: usize = 8 * 1024;

/// The answer of the proxy API when the deployment has no sealing key.
pub(crate) fn no_key() -> ApiError {
    ApiError::Unavailable(
        "the proxy API is not enabled: set proxy.secret_key in the configuration".into(),
    )
}

/// Body of the 202 answer of an async proxied call.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = ProxyAccepted)]
struct Accepted<'a> {
    /// Always `Accepted`.
    #[schema(value_type = String, example = "Accepted")]
    status: &'static str,
    /// The job's task id.
    #[schema(value_type = String)]
    job_id: &'a str,
    /// Where to poll the job.
    status_url: String,
}

/// The control headers of a proxied call (every other header goes to the upstream).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // read by `parse_control`; this type only describes them
struct ProxyHeaders {
    /// The upstream URL (or give `X-Route-Key`).
    #[param(rename = "X-Target-URL", format = "uri")]
    target_url: Option<String>,
    /// A route's key instead of `X-Target-URL`.
    #[param(rename = "X-Route-Key", pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    route_key: Option<String>,
    /// Async mode: where the outcome is delivered.
    #[param(rename = "X-Webhook-Callback", format = "uri")]
    webhook_callback: Option<String>,
    /// Retries after the first attempt round (0-100).
    #[param(rename = "X-Retry-Count", pattern = r"^[0-9]{1,3}$")]
    retry_count: Option<String>,
    /// First retry delay (0-1d): `"500ms"`, `"1s"`, `"5m"` or integer seconds.
    #[param(rename = "X-Retry-Delay", pattern = r"^[0-9]+(ms|s|m|h|d)?$")]
    retry_delay: Option<String>,
    /// Timeout of each upstream call (100ms-1h).
    #[param(rename = "X-Proxy-Timeout", pattern = r"^[0-9]+(ms|s|m|h|d)?$")]
    proxy_timeout: Option<String>,
    /// Sent upstream as `Authorization`; sealed at rest, never shown (at most 8 KiB).
    #[param(rename = "X-Identity-Key", max_length = 8192)]
    identity_key: Option<String>,
    /// Async mode: the same key within `proxy.idempotency_window` and the same call
    /// return the first job.
    #[param(rename = "X-Proxy-Idempotency-Key", pattern = r"^[!-~]{1,255}$")]
    idempotency_key: Option<String>,
    /// W3C trace context: the job joins the client's trace.
    #[param(rename = "traceparent")]
    traceparent: Option<String>,
}

/// The query of a proxied call.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // read by `parse_control`; this type only describes it
struct ProxyQuery {
    /// Like `X-Webhook-Callback`.
    #[param(format = "uri")]
    webhook: Option<String>,
}

/// The control headers of one request, validated.
struct Control {
    target_url: Option<String>,
    route_key: Option<String>,
    callback_url: Option<String>,
    retries: Option<u32>,
    delay: Option<Duration>,
    timeout: Option<Duration>,
    identity: Option<HeaderValue>,
    idempotency_key: Option<String>,
    /// The client's `traceparent`, if it sent one (the job joins its trace).
    traceparent: Option<String>,
}

fn invalid(header: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidHeader {
        header,
        message: message.into(),
    }
}

/// A control header as text: present once, visible ASCII. `name` is spelled as
/// clients write it (header lookup ignores case), so errors name it that way.
fn text<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<Option<&'a str>, ApiError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(invalid(name, "give it once"));
    }
    let text = value
        .to_str()
        .map_err(|_| invalid(name, "must be printable ASCII"))?
        .trim();
    if text.is_empty() {
        return Err(invalid(name, "must not be empty"));
    }
    Ok(Some(text))
}

fn bounded_duration(
    headers: &HeaderMap,
    name: &'static str,
    (low, high): (Duration, Duration),
) -> Result<Option<Duration>, ApiError> {
    let Some(raw) = text(headers, name)? else {
        return Ok(None);
    };
    let value = duration::parse(raw).map_err(|e| invalid(name, e.to_string()))?;
    if value < low || value > high {
        return Err(invalid(
            name,
            format!(
                "must be between {} and {}, got {raw:?}",
                duration::format(low),
                duration::format(high)
            ),
        ));
    }
    Ok(Some(value))
}

/// The control headers (and `?webhook=`) of a request, checked against `guard` and
/// the longest accepted URL; nothing else of the request is read.
fn parse_control(
    guard: &UrlGuard,
    max_url: usize,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Control, ApiError> {
    let url = |name: &'static str, raw: &str| -> Result<String, ApiError> {
        guard
            .validate_url(raw, max_url)
            .map(|_| raw.to_string())
            .map_err(|e| invalid(name, e.to_string()))
    };
    let target_url = text(headers, "X-Target-URL")?
        .map(|raw| url("X-Target-URL", raw))
        .transpose()?;
    let route_key = text(headers, "X-Route-Key")?
        .map(|key| {
            if tern_core::topology::is_subject_token(key) {
                Ok(key.to_string())
            } else {
                Err(invalid(
                    "X-Route-Key",
                    "must be 1-64 characters of A-Z a-z 0-9 _ -",
                ))
            }
        })
        .transpose()?;
    match (&target_url, &route_key) {
        (None, None) => {
            return Err(invalid(
                "X-Target-URL",
                "required (or X-Route-Key naming a route)",
            ));
        }
        (Some(_), Some(_)) => {
            return Err(invalid(
                "X-Route-Key",
                "give X-Target-URL or X-Route-Key, not both",
            ));
        }
        _ => {}
    }
    let callback_url = match (text(headers, "X-Webhook-Callback")?, query.get("webhook")) {
        (Some(raw), _) => Some(url("X-Webhook-Callback", raw)?),
        (None, Some(raw)) => Some(url("X-Webhook-Callback", raw).map_err(|e| match e {
            ApiError::InvalidHeader { message, .. } => {
                ApiError::BadRequest(format!("query parameter webhook: {message}"))
            }
            other => other,
        })?),
        (None, None) => None,
    };
    let retries = text(headers, "X-Retry-Count")?
        .map(|raw| {
            raw.parse::<u32>()
                .ok()
                .filter(|n| *n <= policy::MAX_RETRIES)
                .ok_or_else(|| {
                    invalid(
                        "X-Retry-Count",
                        format!(
                            "must be an integer between 0 and {}, got {raw:?}",
                            policy::MAX_RETRIES
                        ),
                    )
                })
        })
        .transpose()?;
    let delay = bounded_duration(headers, "X-Retry-Delay", policy::INITIAL_DELAY)?;
    let timeout = bounded_duration(headers, "X-Proxy-Timeout", policy::TIMEOUT)?;
    let identity = match headers.get("X-Identity-Key") {
        None => None,
        Some(value) if value.is_empty() => {
            return Err(invalid("X-Identity-Key", "must not be empty"));
        }
        Some(value) if value.len() > MAX_IDENTITY_LEN => {
            return Err(invalid(
                "X-Identity-Key",
                format!("must be at most {MAX_IDENTITY_LEN} bytes"),
            ));
        }
        Some(value) => Some(value.clone()),
    };
    let idempotency_key = text(headers, "X-Proxy-Idempotency-Key")?
        .map(|key| {
            if idempotency::is_valid_key(key) {
                Ok(key.to_string())
            } else {
                Err(invalid(
                    "X-Proxy-Idempotency-Key",
                    format!(
                        "must be 1-{} printable ASCII characters",
                        idempotency::MAX_KEY_LEN
                    ),
                ))
            }
        })
        .transpose()?;
    Ok(Control {
        target_url,
        route_key,
        callback_url,
        retries,
        delay,
        timeout,
        identity,
        idempotency_key,
        traceparent: headers
            .get(trace_context::HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    })
}

/// Configuration defaults, then the `proxy` queue's policy, then the headers.
fn policy_of(state: &AppState, tenant: &Tenant, control: &Control) -> RetryPolicy {
    let mut retry = state
        .queues
        .policy(&tenant.id, PROXY_QUEUE)
        .and_then(|queue| queue.retry)
        .unwrap_or_else(|| policy::defaults(&state.config.retry));
    if let Some(n) = control.retries {
        retry.max_retries = n;
    }
    if let Some(delay) = control.delay {
        retry.initial_delay_ms = delay.as_millis() as u64;
        retry.max_delay_ms = retry.max_delay_ms.max(retry.initial_delay_ms);
    }
    if let Some(timeout) = control.timeout {
        retry.timeout_ms = timeout.as_millis() as u64;
    }
    retry
}

/// What `/v1/proxy` and `/` answer, for their OpenAPI description (both routes share it).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Only described, never built: the handlers answer with `Response`.
enum ProxyResponses {
    #[response(status = 202, description = "Async mode (X-Webhook-Callback): the job was accepted; its outcome goes to the callback", headers(
        ("Location" = String, description = "The job's status URL"),
        ("Idempotent-Replayed" = String, description = "`true` for a replay of an X-Proxy-Idempotency-Key"),
    ))]
    Accepted(Accepted<'static>),
    #[response(
        status = 400,
        description = "A control header (or `webhook`) is malformed or out of bounds; the message names it"
    )]
    BadRequest(ErrorBody),
    #[response(status = 404, description = "No route with this X-Route-Key")]
    NotFound(ErrorBody),
    #[response(
        status = 409,
        description = "X-Proxy-Idempotency-Key used for a different call, or still in progress"
    )]
    Conflict(ErrorBody),
    #[response(
        status = 413,
        description = "Body larger than `ingress.max_body_bytes`"
    )]
    TooLarge(ErrorBody),
    #[response(status = 502, description = "Sync mode: no upstream answered")]
    BadGateway(ErrorBody),
    #[response(
        status = 504,
        description = "Sync mode: the upstream timed out, or `proxy.sync_deadline` passed"
    )]
    GatewayTimeout(ErrorBody),
    #[response(
        status = "default",
        description = "Sync mode: the upstream's last response as it came (status, headers, body), plus `X-Tern-Attempts`"
    )]
    Upstream,
}

/// `/` answers proxied calls only; anything else there is an unknown route.
#[utoipa::path(
    method(get, post, put, patch, delete),
    path = "/",
    tag = "proxy",
    summary = "A proxied call (with X-Target-URL or X-Route-Key; any method)",
    description = "The same as `/v1/proxy`; without X-Target-URL or X-Route-Key it is `404`.",
    params(ProxyHeaders, ProxyQuery),
    request_body(description = "Sent to the upstream as it is (any Content-Type, or none)", content(
        (Object = "application/json"),
        ([u8] = "application/octet-stream"),
    )),
    responses(ProxyResponses),
)]
pub async fn root(state: State<AppState>, request: Request) -> Result<Response, ApiError> {
    let headers = request.headers();
    if !headers.contains_key("x-target-url") && !headers.contains_key("x-route-key") {
        return Err(ApiError::NotFound("no such route".into()));
    }
    handle(state, request).await
}

/// `/v1/proxy`, any method: the method is the upstream's. An asynchronous call (one
/// with a callback) is a task submission and counted as one.
#[utoipa::path(
    method(get, post, put, patch, delete),
    path = "/v1/proxy",
    tag = "proxy",
    summary = "A proxied call (any method: it is the upstream's)",
    description = "With X-Webhook-Callback (or `?webhook=`) the call becomes a job: `202` at once, the outcome is POSTed to the callback. Without, Tern makes the call with the same retries and answers with the upstream's response.",
    params(ProxyHeaders, ProxyQuery),
    request_body(description = "Sent to the upstream as it is (any Content-Type, or none)", content(
        (Object = "application/json"),
        ([u8] = "application/octet-stream"),
    )),
    responses(ProxyResponses),
)]
pub async fn handle(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let (mut parts, body) = request.into_parts();
    let asynchronous = parts.headers.contains_key("x-webhook-callback")
        || parts.uri.query().is_some_and(|q| q.contains("webhook="));
    let auth = Authenticated::from_request_parts(&mut parts, &state).await;
    let tier = auth.as_ref().ok().map(|Authenticated(tenant)| tenant.tier);
    let result = match auth {
        Ok(Authenticated(tenant)) => proxy(&state, tenant, parts, body).await,
        Err(e) => Err(e),
    };
    if asynchronous {
        crate::submissions::record(tier, PROXY_QUEUE, &result);
    }
    result
}

async fn proxy(
    state: &AppState,
    tenant: std::sync::Arc<Tenant>,
    parts: axum::http::request::Parts,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let query = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::BadRequest(format!("query string: {e}")))?;
    let control = parse_control(
        &state.rules.guard,
        state.config.ingress.max_url_len,
        &parts.headers,
        &query,
    )?;
    let sealer = state.sealer.as_ref().ok_or_else(no_key)?;
    let body = crate::body::raw(body, state.config.ingress.max_body_bytes).await?;

    let targets = match (&control.target_url, &control.route_key) {
        (Some(url), _) => vec![ProxyTarget {
            url: url.clone(),
            ..Default::default()
        }],
        (None, Some(key)) => {
            crate::routes::load(state, &tenant.id, key)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("no route {key:?} (X-Route-Key)")))?
                .targets
        }
        (None, None) => Vec::new(),
    };
    let mut headers = forwarded_headers(&parts.headers);
    if let Some(identity) = &control.identity {
        headers.insert(header::AUTHORIZATION, identity.clone());
    }
    let work = ProxyWork {
        method: parts.method.as_str().to_string(),
        targets,
        sealed_headers: proxy_work::seal_headers(sealer, &tenant.id, &headers).into(),
        body,
        callback_url: control.callback_url.clone().unwrap_or_default(),
        route_key: control.route_key.clone().unwrap_or_default(),
    };
    let retry = policy_of(state, &tenant, &control);
    if control.callback_url.is_some() {
        accept(state, &tenant, &control, work, retry).await
    } else {
        call(state, &tenant, work, retry).await
    }
}

/// Async mode: the proxied call becomes a task; 202 once JetStream has it.
async fn accept(
    state: &AppState,
    tenant: &Tenant,
    control: &Control,
    work: ProxyWork,
    retry: RetryPolicy,
) -> Result<Response, ApiError> {
    let id = uuid::Uuid::now_v7().to_string();
    let (span, traceparent) = tern_core::task_span::accept(&id, control.traceparent.as_deref());
    // What must match for a replay: the call, not its (sealed) credentials.
    let fingerprint = idempotency::fingerprint(
        &work.method,
        &format!(
            "/v1/proxy\n{}\n{}\n{}",
            upstream_label(&work),
            work.route_key,
            work.callback_url
        ),
        &work.body,
    );
    let task = Task {
        id: id.clone(),
        tenant_id: tenant.id.clone(),
        tier: tenant.tier.to_proto() as i32,
        queue: PROXY_QUEUE.to_string(),
        created_at_ms: tern_core::now_ms(),
        retry: Some(retry),
        record_revision: 0,
        callback_deadline_ms: 0,
        notify_url: String::new(),
        not_before_ms: 0,
        schedule_id: String::new(),
        schedule_slot_ms: 0,
        traceparent,
        work: Some(Work::Proxy(work)),
    };
    let accepted = async {
        Ok::<_, ApiError>(match &control.idempotency_key {
            None => {
                state.acceptor.enqueue(tenant, task).await?;
                (id, false)
            }
            Some(key) => {
                let storage_key = idempotency::storage_key(&tenant.id, &format!("proxy:{key}"));
                let window = state.config.proxy.idempotency_window.get();
                match idempotent::submit(
                    state,
                    &storage_key,
                    &fingerprint,
                    &id,
                    Some(window),
                    || async { Ok(state.acceptor.enqueue(tenant, task).await?) },
                )
                .await?
                {
                    Outcome::Accepted(()) => (id, false),
                    Outcome::Replayed(job_id) => (job_id, true),
                }
            }
        })
    };
    let (job_id, replayed) = accepted.instrument(span.clone()).await?;
    span.in_scope(|| tracing::debug!(replayed, "proxied call accepted"));
    let status_url = crate::tasks::status_url(state, &job_id);
    let body = Accepted {
        status: "Accepted",
        job_id: &job_id,
        status_url: status_url.clone(),
    };
    Ok(crate::tasks::accepted_response(&status_url, body, replayed))
}

/// Sync mode: rounds with the retry policy's delays, within `proxy.sync_deadline`;
/// the upstream's last response goes back as it came.
async fn call(
    state: &AppState,
    tenant: &Tenant,
    work: ProxyWork,
    retry: RetryPolicy,
) -> Result<Response, ApiError> {
    let targets = proxy_work::targets(
        &work,
        &tenant.id,
        state.sealer.as_ref(),
        Duration::from_millis(retry.timeout_ms),
        state.config.proxy.max_response_bytes,
    )
    .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let started = Instant::now();
    let started_ms = tern_core::now_ms();
    let deadline = started + state.config.proxy.sync_deadline.get();
    let mut rounds = 0u32;
    loop {
        rounds += 1;
        let round = round::run(&targets, Receiver::Upstream, |request| {
            state.executor.execute(request, None)
        });
        let round = match tokio::time::timeout_at(deadline.into(), round).await {
            Ok(round) => round,
            Err(_) => {
                return Err(ApiError::Upstream {
                    status: 504,
                    message: format!(
                        "{} did not answer within proxy.sync_deadline ({})",
                        upstream_label(&work),
                        duration::format(state.config.proxy.sync_deadline.get())
                    ),
                });
            }
        };
        let verdict = round.verdict(Receiver::Upstream);
        let step = retry::decide(
            &retry,
            rounds,
            started_ms,
            tern_core::now_ms(),
            &verdict,
            &mut rand::rng(),
        );
        match step {
            Step::Retry(delay) if Instant::now() + delay < deadline => {
                tokio::time::sleep(delay).await;
            }
            Step::Succeed => {
                let (_, outcome) = round.winning().ok_or_else(|| {
                    ApiError::Unavailable("a successful round without a response".into())
                })?;
                return Ok(relay(&outcome.result, rounds));
            }
            // Out of retries or time: the last answer, or the gateway's error.
            _ => {
                let last = round.calls.last().map(|(_, o)| &o.result);
                return match last {
                    Some(result @ AttemptResult::Response { .. }) => Ok(relay(result, rounds)),
                    _ => Err(ApiError::Upstream {
                        status: failed_status(&round),
                        message: format!(
                            "All retry attempts failed for {}: {}",
                            upstream_label(&work),
                            match verdict {
                                retry::Verdict::Permanent(reason)
                                | retry::Verdict::Retryable { reason, .. } => reason,
                                retry::Verdict::Success => String::new(),
                            }
                        ),
                    }),
                };
            }
        }
    }
}

/// The upstream's response as it came (hop-by-hop headers are the connection's).
fn relay(result: &AttemptResult, rounds: u32) -> Response {
    let AttemptResult::Response {
        status,
        headers,
        body,
    } = result
    else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let mut response = Response::new(axum::body::Body::from(body.clone()));
    *response.status_mut() = StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY);
    *response.headers_mut() = proxy_work::response_headers(headers);
    if let Ok(value) = HeaderValue::from_str(&rounds.to_string()) {
        response.headers_mut().insert("x-tern-attempts", value);
    }
    response
}

#[cfg(test)]
mod properties {
    use super::*;
    use axum::http::HeaderName;
    use proptest::prelude::*;

    const CONTROL: [&str; 8] = [
        "X-Target-URL",
        "X-Route-Key",
        "X-Webhook-Callback",
        "X-Retry-Count",
        "X-Retry-Delay",
        "X-Proxy-Timeout",
        "X-Identity-Key",
        "X-Proxy-Idempotency-Key",
    ];

    fn guard() -> UrlGuard {
        UrlGuard::new(vec!["127.0.0.0/8".parse().unwrap()])
    }

    /// Control headers with arbitrary bytes (as far as HTTP carries them), repeated
    /// or not, and an arbitrary `?webhook=`.
    fn headers() -> impl Strategy<Value = HeaderMap> {
        prop::collection::vec(
            (
                prop::sample::select(CONTROL.to_vec()),
                prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..40),
                    "(https?://127\\.0\\.0\\.1(:[0-9]{1,5})?/[a-z]{0,5}|[0-9]{1,4}|[0-9]{1,6}(ms|s|m|h|d)?|[A-Za-z0-9_-]{1,70})"
                        .prop_map(String::into_bytes),
                ],
            ),
            0..6,
        )
        .prop_map(|pairs| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                if let Ok(value) = HeaderValue::from_bytes(&value) {
                    map.append(HeaderName::from_static(lower(name)), value);
                }
            }
            map
        })
    }

    fn lower(name: &str) -> &'static str {
        match name {
            "X-Target-URL" => "x-target-url",
            "X-Route-Key" => "x-route-key",
            "X-Webhook-Callback" => "x-webhook-callback",
            "X-Retry-Count" => "x-retry-count",
            "X-Retry-Delay" => "x-retry-delay",
            "X-Proxy-Timeout" => "x-proxy-timeout",
            "X-Identity-Key" => "x-identity-key",
            _ => "x-proxy-idempotency-key",
        }
    }

    proptest! {
        /// Any control headers are accepted within their bounds or refused with a
        /// 400 naming one of them; never a panic.
        #[test]
        fn control_headers_are_bounded_or_refused(
            headers in headers(),
            webhook in prop::option::of(any::<String>()),
        ) {
            let query: HashMap<String, String> =
                webhook.into_iter().map(|w| ("webhook".to_string(), w)).collect();
            match parse_control(&guard(), 2048, &headers, &query) {
                Ok(control) => {
                    prop_assert!(control.target_url.is_some() != control.route_key.is_some());
                    prop_assert!(control.retries.is_none_or(|n| n <= policy::MAX_RETRIES));
                    let (low, high) = policy::TIMEOUT;
                    prop_assert!(control.timeout.is_none_or(|t| t >= low && t <= high));
                    prop_assert!(control.delay.is_none_or(|d| d <= policy::INITIAL_DELAY.1));
                }
                Err(ApiError::InvalidHeader { header, .. }) => {
                    prop_assert!(CONTROL.contains(&header), "{header}");
                }
                Err(ApiError::BadRequest(message)) => {
                    prop_assert!(message.starts_with("query parameter webhook"), "{message}");
                }
                Err(other) => prop_assert!(false, "unexpected {other:?}"),
            }
        }

        /// Values in bounds come through as given.
        #[test]
        fn values_in_bounds_are_taken(retries in 0..=policy::MAX_RETRIES, timeout_ms in 100u64..=3_600_000) {
            let mut headers = HeaderMap::new();
            headers.insert("x-target-url", HeaderValue::from_static("http://127.0.0.1:9/x"));
            headers.insert("x-retry-count", HeaderValue::from(retries));
            headers.insert("x-proxy-timeout", HeaderValue::from_str(&format!("{timeout_ms}ms")).unwrap());
            let control = parse_control(&guard(), 2048, &headers, &HashMap::new()).unwrap();
            prop_assert_eq!(control.retries, Some(retries));
            prop_assert_eq!(control.timeout, Some(Duration::from_millis(timeout_ms)));
        }
    }
}
