//! `ternctl verify`: checks the Standard Webhooks signature of a captured request.
//!
//! ```text
//! ternctl verify --secret whsec_... < request.http
//! ```
//! Prints `valid` and exits 0, or explains what is wrong and exits 1.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use clap::Args;
use http::HeaderMap;
use tern_core::signing::{HEADER_TIMESTAMP, SigningSecret, Verifier};

use crate::request_parse;

#[derive(Args)]
pub struct VerifyArgs {
    /// Signing secret (whsec_...). Repeat it, or separate with commas, to accept any of
    /// several secrets (during a rotation).
    #[arg(
        long = "secret",
        value_name = "WHSEC",
        env = "TERN_SIGNING_SECRET",
        hide_env_values = true,
        value_delimiter = ',',
        required = true
    )]
    secrets: Vec<String>,

    /// Largest accepted distance, in seconds, between webhook-timestamp and now.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    tolerance: u64,
}

pub fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let verifier = build_verifier(&args.secrets, args.tolerance)?;

    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!(
            "ternctl verify: reading a raw HTTP request from standard input (end with Ctrl-D)"
        );
    }
    let mut input = Vec::new();
    stdin
        .lock()
        .read_to_end(&mut input)
        .context("reading the request from standard input")?;

    let outcome = check(&verifier, &input, args.tolerance, unix_now());
    let mut out = std::io::stdout().lock();
    // A closed stdout is not worth a panic; the exit code still tells.
    let _ = match &outcome {
        Outcome::Valid { notes } => {
            for note in notes {
                eprintln!("note: {note}");
            }
            writeln!(out, "valid")
        }
        Outcome::Invalid { problem, hints } => {
            let mut text = format!("invalid: {problem}\n");
            for hint in hints {
                text.push_str(&format!("  - {hint}\n"));
            }
            out.write_all(text.as_bytes())
        }
    };
    let _ = out.flush();
    Ok(match outcome {
        Outcome::Valid { .. } => ExitCode::SUCCESS,
        Outcome::Invalid { .. } => ExitCode::FAILURE,
    })
}

/// Parses every secret and builds a verifier that accepts a signature by any of them.
pub(crate) fn build_verifier(secrets: &[String], tolerance_secs: u64) -> anyhow::Result<Verifier> {
    let mut parsed = Vec::with_capacity(secrets.len());
    for (i, secret) in secrets
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .enumerate()
    {
        // The error explains the problem; the secret itself is never printed.
        let secret =
            SigningSecret::parse(secret).map_err(|e| anyhow!("signing secret #{}: {e}", i + 1))?;
        parsed.push(secret);
    }
    if parsed.is_empty() {
        bail!("no signing secret given: pass --secret whsec_... or set TERN_SIGNING_SECRET");
    }
    Ok(Verifier::new(parsed).with_tolerance(Duration::from_secs(tolerance_secs)))
}

pub(crate) enum Outcome {
    Valid { notes: Vec<String> },
    Invalid { problem: String, hints: Vec<String> },
}

/// Parses a captured request and verifies it as of `now` (Unix seconds).
pub(crate) fn check(verifier: &Verifier, input: &[u8], tolerance_secs: u64, now: i64) -> Outcome {
    let request = match request_parse::parse(input) {
        Ok(request) => request,
        Err(e) => {
            return Outcome::Invalid {
                problem: format!("cannot read the request: {e}"),
                hints: vec![
                    "expected: a request line (POST /path HTTP/1.1), headers, a blank line, then the body byte for byte"
                        .to_owned(),
                ],
            };
        }
    };
    let mut notes = Vec::with_capacity(request.notes.len() + 1);
    notes.push(format!(
        "checked {}, {} body byte(s)",
        request.request_line.as_ref().map_or_else(
            || "a request without request line".to_owned(),
            ToString::to_string
        ),
        request.body.len()
    ));
    notes.extend(request.notes);
    match verifier.verify_at(&request.headers, &request.body, now) {
        Ok(()) => Outcome::Valid { notes },
        Err(e) => {
            let mut hints = notes;
            hints.extend(diagnose(
                &request.headers,
                &request.body,
                tolerance_secs,
                now,
            ));
            Outcome::Invalid {
                problem: e.to_string(),
                hints,
            }
        }
    }
}

/// What to do about a failed verification, as far as the request itself shows.
pub(crate) fn diagnose(
    headers: &HeaderMap,
    body: &[u8],
    tolerance_secs: u64,
    now: i64,
) -> Vec<String> {
    let mut hints = Vec::new();
    if let Some(ts) = headers
        .get(HEADER_TIMESTAMP)
        .or_else(|| headers.get("svix-timestamp"))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
    {
        let age = now.saturating_sub(ts);
        let distance = age.unsigned_abs();
        if distance > tolerance_secs {
            let wider = distance.saturating_add(60);
            hints.push(if age >= 0 {
                format!(
                    "the request was signed {distance}s ago; to check an old capture pass --tolerance {wider}"
                )
            } else {
                format!(
                    "the request is dated {distance}s in the future (is the sender's clock ahead?); --tolerance {wider} would accept it"
                )
            });
        }
    }
    if !headers.contains_key(http::header::CONTENT_LENGTH) && body.last() == Some(&b'\n') {
        hints.push(
            "the body ends with a newline and there is no Content-Length: if an editor added it, the signed bytes differ"
                .to_owned(),
        );
    }
    hints
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const OTHER_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const TS: i64 = 1_700_000_000;
    const BODY: &str =
        r#"{"task_id":"t1","queue":"default","payload":{"hello":"world"},"attempt":1}"#;

    fn verifier(secrets: &[&str]) -> Verifier {
        let secrets: Vec<String> = secrets.iter().map(|s| (*s).to_owned()).collect();
        build_verifier(&secrets, 300).expect("valid secrets")
    }

    /// A capture as `ternctl listen --save-dir` writes it, signed with `secret`.
    fn capture(secret: &str, body: &str) -> Vec<u8> {
        let signature =
            SigningSecret::parse(secret)
                .expect("valid secret")
                .sign("msg_1", TS, body.as_bytes());
        format!(
            "POST /webhook HTTP/1.1\r\nhost: 127.0.0.1:9999\r\ncontent-type: application/json\r\n\
             webhook-id: msg_1\r\nwebhook-timestamp: {TS}\r\nwebhook-signature: {signature}\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn invalid(outcome: Outcome) -> (String, Vec<String>) {
        match outcome {
            Outcome::Valid { notes } => panic!("expected invalid, got valid ({notes:?})"),
            Outcome::Invalid { problem, hints } => (problem, hints),
        }
    }

    #[test]
    fn a_correctly_signed_capture_is_valid() {
        let outcome = check(&verifier(&[SECRET]), &capture(SECRET, BODY), 300, TS + 5);
        match outcome {
            Outcome::Valid { notes } => {
                assert!(notes[0].contains("POST /webhook HTTP/1.1"), "{notes:?}");
            }
            Outcome::Invalid { problem, hints } => panic!("{problem} {hints:?}"),
        }
    }

    #[test]
    fn any_of_several_secrets_is_accepted() {
        let v = verifier(&[OTHER_SECRET, SECRET]);
        assert!(matches!(
            check(&v, &capture(SECRET, BODY), 300, TS),
            Outcome::Valid { .. }
        ));
    }

    #[test]
    fn blank_secrets_are_skipped_and_bad_ones_named() {
        let secrets = vec![SECRET.to_owned(), " ".to_owned()];
        assert!(build_verifier(&secrets, 300).is_ok());
        assert!(build_verifier(&[" ".to_owned()], 300).is_err());
        let err = build_verifier(&["whsec_!!!".to_owned()], 300).expect_err("bad secret");
        assert!(err.to_string().contains("secret #1"), "{err}");
        assert!(
            !err.to_string().contains("!!!"),
            "the secret must not be echoed: {err}"
        );
    }

    #[test]
    fn a_wrong_secret_is_explained() {
        let (problem, _) = invalid(check(
            &verifier(&[OTHER_SECRET]),
            &capture(SECRET, BODY),
            300,
            TS,
        ));
        assert!(problem.contains("no signature matches"), "{problem}");
    }

    #[test]
    fn a_changed_body_is_invalid() {
        let mut input = capture(SECRET, BODY);
        let at = input.len() - 3;
        input[at] = b'X';
        let (problem, _) = invalid(check(&verifier(&[SECRET]), &input, 300, TS));
        assert!(problem.contains("no signature matches"), "{problem}");
    }

    #[test]
    fn an_editor_added_newline_is_forgiven_by_content_length() {
        let mut input = capture(SECRET, BODY);
        input.push(b'\n');
        match check(&verifier(&[SECRET]), &input, 300, TS) {
            Outcome::Valid { notes } => assert!(
                notes.iter().any(|n| n.contains("ignored 1 byte")),
                "{notes:?}"
            ),
            Outcome::Invalid { problem, hints } => panic!("{problem} {hints:?}"),
        }
    }

    #[test]
    fn an_old_capture_gets_a_tolerance_hint() {
        let (problem, hints) = invalid(check(
            &verifier(&[SECRET]),
            &capture(SECRET, BODY),
            300,
            TS + 3600,
        ));
        assert!(problem.contains("old"), "{problem}");
        assert!(
            hints.iter().any(|h| h.contains("--tolerance 3660")),
            "{hints:?}"
        );
    }

    #[test]
    fn unreadable_input_is_explained() {
        let (problem, _) = invalid(check(&verifier(&[SECRET]), b"", 300, TS));
        assert!(problem.contains("cannot read the request"), "{problem}");
        let (problem, _) = invalid(check(
            &verifier(&[SECRET]),
            b"POST / HTTP/1.1\r\nno colon\r\n\r\n",
            300,
            TS,
        ));
        assert!(problem.contains("line 2"), "{problem}");
    }

    #[test]
    fn missing_headers_are_named() {
        let (problem, _) = invalid(check(
            &verifier(&[SECRET]),
            b"POST / HTTP/1.1\r\n\r\n{}",
            300,
            TS,
        ));
        assert!(problem.contains("webhook-id"), "{problem}");
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn diagnose_explains_old_and_future_timestamps() {
        let h = headers(&[("webhook-timestamp", "1700000000")]);
        let hints = diagnose(&h, b"{}", 300, 1_700_000_000 + 3600);
        assert!(
            hints
                .iter()
                .any(|h| h.contains("3600s ago") && h.contains("--tolerance 3660")),
            "{hints:?}"
        );
        let hints = diagnose(&h, b"{}", 300, 1_700_000_000 - 900);
        assert!(
            hints.iter().any(|h| h.contains("in the future")),
            "{hints:?}"
        );
        assert!(diagnose(&h, b"{}", 300, 1_700_000_000 + 10).is_empty());
        let svix = headers(&[("svix-timestamp", "1700000000")]);
        assert!(!diagnose(&svix, b"{}", 300, 1_700_000_000 + 3600).is_empty());
    }

    #[test]
    fn diagnose_warns_about_a_trailing_newline_without_content_length() {
        let h = headers(&[("webhook-timestamp", "1")]);
        let hints = diagnose(&h, b"{}\n", u64::MAX, 1);
        assert!(hints.iter().any(|h| h.contains("newline")), "{hints:?}");
    }
}
