//! `ternctl listen`: a webhook receiver for development.
//!
//! Accepts any method on any path, prints each request (time, method, path, headers,
//! body pretty-printed when it is JSON), checks the Standard Webhooks signature when a
//! secret is given, and answers `--status` (or 500 with probability `--fail-rate`, to
//! watch Tern retry).

use std::hash::{BuildHasher, RandomState};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use clap::Args;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use tern_core::signing::Verifier;

use crate::verify::build_verifier;

/// Largest request body accepted (Tern payloads are at most 1 MiB plus an envelope).
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

#[derive(Args)]
pub struct ListenArgs {
    /// Port to listen on.
    #[arg(long, default_value_t = 9999)]
    port: u16,

    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,

    /// Signing secret (whsec_...) to verify signatures with. Repeat it, or separate
    /// with commas, to accept any of several. Without one, signatures are not checked.
    #[arg(
        long = "secret",
        value_name = "WHSEC",
        env = "TERN_SIGNING_SECRET",
        hide_env_values = true,
        value_delimiter = ','
    )]
    secrets: Vec<String>,

    /// Largest accepted distance, in seconds, between webhook-timestamp and now.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    tolerance: u64,

    /// Status code to answer with.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(100..=599))]
    status: u16,

    /// Probability (0.0 to 1.0) of answering 500 instead, to exercise retries.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    fail_rate: f64,

    /// One line per request instead of headers and body.
    #[arg(long, short)]
    quiet: bool,

    /// Print at most this many bytes of each body.
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024)]
    max_body_print: usize,

    /// Also save every request as a raw HTTP file in this folder, for `ternctl verify`.
    #[arg(long, value_name = "DIR")]
    save_dir: Option<PathBuf>,
}

struct AppState {
    verifier: Option<Verifier>,
    status: StatusCode,
    fail_rate: f64,
    quiet: bool,
    max_body_print: usize,
    save_dir: Option<PathBuf>,
    received: AtomicU64,
}

pub fn run(args: ListenArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(args: ListenArgs) -> anyhow::Result<()> {
    let verifier = if args.secrets.iter().any(|s| !s.trim().is_empty()) {
        Some(build_verifier(&args.secrets, args.tolerance)?)
    } else {
        None
    };
    let status = StatusCode::from_u16(args.status)
        .with_context(|| format!("--status {} is not an HTTP status code", args.status))?;
    if let Some(dir) = &args.save_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }

    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("listening on {}:{}", args.host, args.port))?;
    let local = listener.local_addr().context("reading the bound address")?;

    let signature_mode = if verifier.is_some() {
        "signatures checked"
    } else {
        "signatures NOT checked (no --secret / TERN_SIGNING_SECRET)"
    };
    let failing = if args.fail_rate > 0.0 {
        format!(", 500 with probability {}", args.fail_rate)
    } else {
        String::new()
    };
    emit(&format!(
        "ternctl listen: http://{local} ({signature_mode}; answering {}{failing})\n",
        status.as_u16()
    ));

    let state = Arc::new(AppState {
        verifier,
        status,
        fail_rate: args.fail_rate,
        quiet: args.quiet,
        max_body_print: args.max_body_print,
        save_dir: args.save_dir,
        received: AtomicU64::new(0),
    });
    let app = Router::new()
        .fallback(handle)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state);

    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
    .context("serving HTTP")?;
    emit("ternctl listen: stopped\n");
    Ok(())
}

async fn handle(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let n = state.received.fetch_add(1, Ordering::Relaxed) + 1;
    let now = SystemTime::now();

    let signature = match &state.verifier {
        Some(verifier) => match verifier.verify(&headers, &body) {
            Ok(()) => "valid".to_owned(),
            Err(e) => format!("INVALID ({e})"),
        },
        None => "not checked".to_owned(),
    };
    let injected_failure = state.fail_rate > 0.0 && random_unit(n) < state.fail_rate;
    let status = if injected_failure {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        state.status
    };

    let saved = match &state.save_dir {
        Some(dir) => Some(save_request(dir, n, now, &method, &uri, &headers, &body).await),
        None => None,
    };

    let mut report = String::new();
    let time = format_utc(now);
    if state.quiet {
        let id = headers
            .get("webhook-id")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_else(|| "-".to_owned());
        report.push_str(&format!(
            "{time} #{n} {method} {uri} {} bytes webhook-id={id} signature: {signature} -> {}\n",
            body.len(),
            status.as_u16()
        ));
    } else {
        report.push_str(&format!("---- #{n} {time} from {peer}\n{method} {uri}\n"));
        for (name, value) in &headers {
            report.push_str(&format!(
                "{name}: {}\n",
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        report.push('\n');
        report.push_str(&render_body(&body, state.max_body_print));
        report.push('\n');
        report.push_str(&format!("signature: {signature}\n"));
        let reason = if injected_failure {
            " (--fail-rate)"
        } else {
            ""
        };
        report.push_str(&format!("answered: {}{reason}\n", status.as_u16()));
    }
    match saved {
        Some(Ok(path)) => report.push_str(&format!("saved: {}\n", path.display())),
        Some(Err(e)) => report.push_str(&format!("not saved: {e:#}\n")),
        None => {}
    }
    emit(&report);

    let body = if injected_failure {
        r#"{"error":"injected failure (ternctl listen --fail-rate)"}"#
    } else if status.is_success() {
        r#"{"received":true}"#
    } else {
        r#"{"error":"ternctl listen --status"}"#
    };
    (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response()
}

/// The body for a person to read: indented JSON, else text, else a byte count.
fn render_body(body: &[u8], limit: usize) -> String {
    if body.is_empty() {
        return "(empty body)".to_owned();
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return format!("({} bytes of binary data)", body.len());
    };
    let text = if serde_json::from_str::<serde_json::Value>(text).is_ok() {
        indent_json(text)
    } else {
        text.to_owned()
    };
    truncate(text, limit)
}

/// Re-indents valid JSON text, keeping keys in the order sent and numbers and strings
/// exactly as written (a parsed-and-printed value would sort keys).
fn indent_json(src: &str) -> String {
    fn newline(out: &mut String, depth: usize) {
        out.push('\n');
        for _ in 0..depth {
            out.push_str("  ");
        }
    }
    let mut out = String::with_capacity(src.len() * 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = src.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                while chars.peek().is_some_and(|n| n.is_whitespace()) {
                    chars.next();
                }
                let close = if c == '{' { '}' } else { ']' };
                out.push(c);
                if chars.peek() == Some(&close) {
                    chars.next();
                    out.push(close);
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(',');
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

fn truncate(mut text: String, limit: usize) -> String {
    if text.len() <= limit {
        return text;
    }
    let mut cut = limit;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let more = text.len() - cut;
    text.truncate(cut);
    text.push_str(&format!(
        "\n... ({more} more bytes; --max-body-print to see more)"
    ));
    text
}

/// Writes the request as a raw HTTP/1.1 file that `ternctl verify` reads back. The
/// body is written as received (already de-chunked), so Content-Length replaces any
/// Transfer-Encoding.
async fn save_request(
    dir: &Path,
    n: u64,
    now: SystemTime,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> anyhow::Result<PathBuf> {
    let mut raw = Vec::with_capacity(body.len() + 1024);
    raw.extend_from_slice(format!("{method} {uri} HTTP/1.1\r\n").as_bytes());
    for (name, value) in headers {
        if name == TRANSFER_ENCODING || name == CONTENT_LENGTH {
            continue;
        }
        raw.extend_from_slice(name.as_str().as_bytes());
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(value.as_bytes());
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    raw.extend_from_slice(body);
    let millis = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let path = dir.join(format!("{millis}-{n:06}.http"));
    tokio::fs::write(&path, raw)
        .await
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Writes to stdout in one piece (so concurrent requests do not interleave) and
/// ignores a closed stdout instead of panicking.
fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// A number in [0, 1), different on every call.
fn random_unit(salt: u64) -> f64 {
    let bits = RandomState::new().hash_one(salt);
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

fn parse_probability(s: &str) -> Result<f64, String> {
    let p: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{s} is not between 0.0 and 1.0"))
    }
}

/// `2026-11-22T07:31:48.123Z`
fn format_utc(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let millis = since.subsec_millis();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_utc_times() {
        assert_eq!(format_utc(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(format_utc(t), "2023-11-14T22:13:20.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(format_utc(leap), "2000-02-29T00:00:00.000Z");
        let new_year = UNIX_EPOCH + Duration::from_secs(1_735_689_599); // 2024-12-31 23:59:59
        assert_eq!(format_utc(new_year), "2024-12-31T23:59:59.000Z");
    }

    #[test]
    fn renders_json_pretty_and_other_bodies_plainly() {
        assert_eq!(render_body(br#"{"a":1}"#, 1000), "{\n  \"a\": 1\n}");
        assert_eq!(render_body(b"plain text", 1000), "plain text");
        assert_eq!(render_body(b"\xff\xfe", 1000), "(2 bytes of binary data)");
        assert_eq!(render_body(b"", 1000), "(empty body)");
    }

    #[test]
    fn indents_json_keeping_order_and_literals() {
        let src = r#" {"b":1.50,"a":[1, 2],"e":{ },"l":[],"s":"x,{y}\"z:[","n":null} "#;
        let expected = "{\n  \"b\": 1.50,\n  \"a\": [\n    1,\n    2\n  ],\n  \"e\": {},\n  \"l\": [],\n  \"s\": \"x,{y}\\\"z:[\",\n  \"n\": null\n}";
        assert_eq!(render_body(src.as_bytes(), 10_000), expected);
        assert_eq!(render_body(b"[]", 100), "[]");
        assert_eq!(render_body(b"\"just a string\"", 100), "\"just a string\"");
    }

    #[test]
    fn truncates_long_bodies_on_a_char_boundary() {
        let out = render_body("ééééé".as_bytes(), 3); // 2 bytes per char
        assert!(out.starts_with("é\n... (8 more bytes"), "{out}");
    }

    #[test]
    fn probability_is_checked() {
        assert_eq!(parse_probability("0.25"), Ok(0.25));
        assert_eq!(parse_probability("1"), Ok(1.0));
        assert!(parse_probability("1.5").is_err());
        assert!(parse_probability("-0.1").is_err());
        assert!(parse_probability("NaN").is_err());
        assert!(parse_probability("often").is_err());
    }

    #[test]
    fn random_unit_is_in_range_and_varies() {
        let samples: Vec<f64> = (0..1000).map(random_unit).collect();
        assert!(samples.iter().all(|x| (0.0..1.0).contains(x)));
        let below_half = samples.iter().filter(|x| **x < 0.5).count();
        assert!((300..700).contains(&below_half), "{below_half}");
    }
}
