//! Request latency by route on every HTTP listener (public API, admin API,
//! callbacks): `tern_http_request_duration_seconds{listener, method, route, status}`.
//!
//! The route is the router's pattern (`/v1/tasks/{id}`), never the path itself, so
//! ids and callback tokens neither reach the metrics nor multiply their series.

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

/// Label of a request that matched no route.
const UNMATCHED: &str = "unmatched";

/// `router` with its requests timed under `listener` (`api`, `admin`, `callbacks`).
pub fn instrument<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    listener: &'static str,
) -> Router<S> {
    router.layer(axum::middleware::from_fn_with_state(listener, track))
}

async fn track(State(listener): State<&'static str>, request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| UNMATCHED.to_string(), |path| path.as_str().to_string());
    let response = next.run(request).await;
    metrics::histogram!(
        "tern_http_request_duration_seconds",
        "listener" => listener,
        "method" => method,
        "route" => route,
        "status" => status_class(response.status().as_u16()),
    )
    .record(started.elapsed().as_secs_f64());
    response
}

/// Standard methods by name; anything else (clients may invent methods) as `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// `2xx`, `4xx`, …: the status class of an HTTP answer.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_stay_few() {
        assert_eq!(status_class(202), "2xx");
        assert_eq!(status_class(429), "4xx");
        assert_eq!(status_class(503), "5xx");
        assert_eq!(status_class(999), "other");
        assert_eq!(method_label(&Method::PUT), "PUT");
        let invented = Method::from_bytes(b"BREW").expect("extension method");
        assert_eq!(method_label(&invented), "other");
    }
}
