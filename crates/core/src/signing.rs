//! Standard Webhooks signing and verification.
//!
//! Every request Tern sends is signed the way <https://www.standardwebhooks.com>
//! describes, so that receivers can check it with the existing standardwebhooks or svix
//! libraries in any language instead of trusting Tern-specific code. The same module
//! verifies, for the CLI, for tests and for anyone embedding `tern-core`.
//!
//! The format, in short: `webhook-id`, `webhook-timestamp` (Unix seconds) and
//! `webhook-signature`, a space-separated list of `v1,<base64 HMAC-SHA256>` computed over
//! `"{id}.{timestamp}.{body}"` with the key that a `whsec_<base64>` secret encodes.
//! Several signatures let a secret be rotated without a window where receivers fail.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName, HeaderValue};
use rand::RngCore as _;
use sha2::Sha256;
use subtle::{Choice, ConstantTimeEq};

/// Header carrying the message id, stable across retries so receivers can dedup.
pub const HEADER_ID: &str = "webhook-id";
/// Header carrying the Unix time (seconds) at which the request was signed.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// Header carrying the space-separated `v1,<base64>` signatures.
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// Prefix that marks a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// Tolerance used when none is given: the value the reference libraries use.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

// Svix sends the same scheme under its own header names; accepting them lets the
// verifier check requests from Svix-based senders too.
const SVIX_ID: &str = "svix-id";
const SVIX_TIMESTAMP: &str = "svix-timestamp";
const SVIX_SIGNATURE: &str = "svix-signature";

const SIGNATURE_VERSION: &str = "v1";
const GENERATED_KEY_LEN: usize = 32;
const MAC_LEN: usize = 32;

// Secrets written by other tools are sometimes unpadded; rejecting them would only
// make migrations harder, and padding carries no information.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

type HmacSha256 = Hmac<Sha256>;

/// A signing key: the bytes a `whsec_<base64>` secret encodes.
///
/// Any non-empty key is accepted so that secrets issued elsewhere (Svix issues 24-byte
/// keys) can be imported unchanged; [`SigningSecret::generate`] makes 32-byte keys.
#[derive(Clone)]
pub struct SigningSecret {
    key: Vec<u8>,
    /// HMAC state with the key already absorbed, cloned per signature (saves hashing
    /// the key's two padded blocks on every delivery).
    keyed: HmacSha256,
}

/// Why a string is not a usable `whsec_` signing secret.
///
/// The messages never quote the secret: they end up in logs and API responses.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    /// The string does not start with `whsec_`.
    #[error("signing secret must start with \"whsec_\" followed by base64")]
    MissingPrefix,
    /// The part after `whsec_` is not base64.
    #[error("signing secret is not valid base64 after \"whsec_\"")]
    InvalidBase64,
    /// The part after `whsec_` decodes to no bytes.
    #[error("signing secret is empty after \"whsec_\"")]
    Empty,
}

impl SigningSecret {
    /// Parses a `whsec_<base64>` secret; surrounding whitespace is ignored.
    pub fn parse(s: &str) -> Result<Self, SecretError> {
        // Secrets pasted into env files or terminals often carry a trailing newline;
        // base64 never contains whitespace, so trimming cannot change a valid key.
        let encoded = s
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        let key = LENIENT_BASE64
            .decode(encoded)
            .map_err(|_| SecretError::InvalidBase64)?;
        Self::from_bytes(key).ok_or(SecretError::Empty)
    }

    /// Makes a new secret of 32 random bytes.
    pub fn generate() -> Self {
        let mut key = vec![0u8; GENERATED_KEY_LEN];
        // The thread RNG is a CSPRNG reseeded from the OS, and unlike OsRng it cannot fail.
        rand::rng().fill_bytes(&mut key);
        Self::keyed(key)
    }

    /// Wraps raw key bytes; `None` for an empty key.
    pub fn from_bytes(key: Vec<u8>) -> Option<Self> {
        (!key.is_empty()).then(|| Self::keyed(key))
    }

    fn keyed(key: Vec<u8>) -> Self {
        let keyed = HmacSha256::new_from_slice(&key)
            .expect("HMAC accepts keys of any length, so this cannot fail");
        Self { key, keyed }
    }

    /// The `whsec_<base64>` form, only ever to be shown to the secret's owner.
    pub fn to_whsec(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.key))
    }

    /// One `v1,<base64>` signature of `"{msg_id}.{timestamp}.{body}"`.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mac = self.mac(msg_id.as_bytes(), timestamp, body);
        format!("{SIGNATURE_VERSION},{}", STANDARD.encode(mac))
    }

    // Works on raw id bytes so that verification never has to reject an id header
    // merely because it is not valid UTF-8: the sender signed whatever bytes it sent.
    fn mac(&self, msg_id: &[u8], timestamp: i64, body: &[u8]) -> [u8; MAC_LEN] {
        let mut mac = self.keyed.clone();
        mac.update(msg_id);
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(<redacted>)")
    }
}

/// The message id cannot be sent as a header value (it holds control characters).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("message id cannot be sent as the webhook-id header: it contains control characters")]
pub struct InvalidMessageId;

/// Signs outbound requests with every current secret, one signature per secret.
///
/// During a rotation it holds the old and the new secret, so receivers that know
/// either one accept the request.
#[derive(Clone, Debug)]
pub struct Signer {
    secrets: Vec<SigningSecret>,
}

impl Signer {
    /// A signer over `secrets`; with none, the signature header is empty and no receiver
    /// will accept the request.
    pub fn new(secrets: Vec<SigningSecret>) -> Self {
        Self { secrets }
    }

    /// The `webhook-signature` value: `v1,<a> v1,<b> ...`, one entry per secret.
    pub fn signature_header(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        self.secrets
            .iter()
            .map(|secret| secret.sign(msg_id, timestamp, body))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Sets `webhook-id`, `webhook-timestamp` and `webhook-signature` on `headers`,
    /// replacing any earlier values.
    ///
    /// Fails only when `msg_id` cannot be a header value; the headers are then left
    /// untouched, so a request is never sent half-signed.
    pub fn apply(
        &self,
        headers: &mut HeaderMap,
        msg_id: &str,
        timestamp: i64,
        body: &[u8],
    ) -> Result<(), InvalidMessageId> {
        let id = HeaderValue::from_str(msg_id).map_err(|_| InvalidMessageId)?;
        let signature = HeaderValue::from_str(&self.signature_header(msg_id, timestamp, body))
            .map_err(|_| InvalidMessageId)?;
        headers.insert(HeaderName::from_static(HEADER_ID), id);
        headers.insert(HeaderName::from_static(HEADER_TIMESTAMP), timestamp.into());
        headers.insert(HeaderName::from_static(HEADER_SIGNATURE), signature);
        Ok(())
    }
}

/// Why a request's signature was not accepted, in words a person can act on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// A required header is absent (under both its webhook-* and svix-* names).
    #[error("the {0} header is missing: the request was not signed the Standard Webhooks way")]
    MissingHeader(&'static str),
    /// The timestamp header is not a non-negative whole number of seconds.
    #[error("the webhook-timestamp header is not a Unix time in whole seconds")]
    InvalidTimestamp,
    /// The timestamp lies further in the past than the tolerance allows.
    #[error(
        "timestamp is {skew_secs} s old, beyond the {tolerance_secs} s tolerance: clock skew or a replayed request"
    )]
    TimestampTooOld {
        /// How many seconds before now the request was signed.
        skew_secs: i64,
        /// The tolerance in force, in seconds.
        tolerance_secs: u64,
    },
    /// The timestamp lies further in the future than the tolerance allows.
    #[error(
        "timestamp is {skew_secs} s in the future, beyond the {tolerance_secs} s tolerance: the sender's clock is ahead"
    )]
    TimestampTooNew {
        /// How many seconds after now the request claims to be signed.
        skew_secs: i64,
        /// The tolerance in force, in seconds.
        tolerance_secs: u64,
    },
    /// The signature header holds no well-formed `v1,<base64>` entry.
    #[error(
        "the signature header holds no v1 signature: expected space-separated \"v1,<base64 HMAC-SHA256>\" entries"
    )]
    NoSignatures,
    /// Well-formed signatures are present but none was made with a known secret.
    #[error("no signature matches any of the given secrets: wrong secret, or the body was changed")]
    NoMatchingSignature,
}

/// Checks Standard Webhooks signatures against one or more secrets.
#[derive(Clone, Debug)]
pub struct Verifier {
    secrets: Vec<SigningSecret>,
    tolerance: Duration,
}

impl Verifier {
    /// A verifier accepting a signature made with any of `secrets`, 5 min tolerance.
    pub fn new(secrets: Vec<SigningSecret>) -> Self {
        Self {
            secrets,
            tolerance: DEFAULT_TOLERANCE,
        }
    }

    /// Replaces the allowed difference between the signed timestamp and now.
    pub fn with_tolerance(self, tolerance: Duration) -> Self {
        Self { tolerance, ..self }
    }

    /// Verifies `headers` and the raw `body` against the system clock.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), VerifyError> {
        // A clock before 1970 is broken; treating it as 0 makes every request look
        // too new, which fails closed.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        self.verify_at(headers, body, now)
    }

    /// Verifies `headers` and the raw `body` as if the time were `now_unix` seconds.
    pub fn verify_at(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_unix: i64,
    ) -> Result<(), VerifyError> {
        let msg_id = header(headers, HEADER_ID, SVIX_ID)?;
        let timestamp_raw = header(headers, HEADER_TIMESTAMP, SVIX_TIMESTAMP)?;
        let signatures = header(headers, HEADER_SIGNATURE, SVIX_SIGNATURE)?;

        let timestamp = parse_timestamp(timestamp_raw)?;
        self.check_timestamp(timestamp, now_unix)?;

        let candidates = parse_signatures(signatures);
        if candidates.is_empty() {
            return Err(VerifyError::NoSignatures);
        }

        // Every pair is compared, without stopping at the first match, so the time taken
        // says nothing about which secret or which entry matched.
        let mut matched = Choice::from(0);
        for secret in &self.secrets {
            let expected = secret.mac(msg_id, timestamp, body);
            for candidate in &candidates {
                matched |= expected.ct_eq(candidate);
            }
        }
        if bool::from(matched) {
            Ok(())
        } else {
            Err(VerifyError::NoMatchingSignature)
        }
    }

    fn check_timestamp(&self, timestamp: i64, now: i64) -> Result<(), VerifyError> {
        let tolerance_secs = self.tolerance.as_secs();
        let tolerance = i64::try_from(tolerance_secs).unwrap_or(i64::MAX);
        let age = now.saturating_sub(timestamp);
        if age > tolerance {
            return Err(VerifyError::TimestampTooOld {
                skew_secs: age,
                tolerance_secs,
            });
        }
        let ahead = timestamp.saturating_sub(now);
        if ahead > tolerance {
            return Err(VerifyError::TimestampTooNew {
                skew_secs: ahead,
                tolerance_secs,
            });
        }
        Ok(())
    }
}

fn header<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
    svix_name: &'static str,
) -> Result<&'a [u8], VerifyError> {
    headers
        .get(name)
        .or_else(|| headers.get(svix_name))
        .map(HeaderValue::as_bytes)
        .ok_or(VerifyError::MissingHeader(name))
}

fn parse_timestamp(raw: &[u8]) -> Result<i64, VerifyError> {
    // Negative times are refused like the reference libraries do: no sender signs
    // before 1970, and accepting them would only widen what a forger can try.
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .filter(|ts| *ts >= 0)
        .ok_or(VerifyError::InvalidTimestamp)
}

// Entries of other versions (future schemes such as v1a) are skipped, not errors,
// so senders can add them without breaking v1 receivers.
fn parse_signatures(raw: &[u8]) -> Vec<[u8; MAC_LEN]> {
    raw.split(|b| *b == b' ')
        .filter_map(|entry| {
            let comma = entry.iter().position(|b| *b == b',')?;
            let (version, rest) = entry.split_at(comma);
            if version != SIGNATURE_VERSION.as_bytes() {
                return None;
            }
            let decoded = LENIENT_BASE64.decode(&rest[1..]).ok()?;
            <[u8; MAC_LEN]>::try_from(decoded.as_slice()).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const VECTOR_TS: i64 = 1_614_265_330;
    const VECTOR_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const VECTOR_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    // Second vector from the Standard Webhooks and svix Rust libraries' tests.
    const SVIX_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const SVIX_ID_VALUE: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const SVIX_TS: i64 = 1_649_367_553;
    const SVIX_BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const SVIX_SIG: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    // Decoy signatures used by the reference libraries' multi-signature tests.
    const DECOYS: [&str; 3] = [
        "v1,tFtCZ5RDCPxzWQRWXWPgrCgE2frDBe9gjpbWQxnVfsQ=",
        "v1,Mm7xgUVICxZfQ3bgf0h0Dof65L/IFx+PnZvnDWPCX6Q=",
        "v1,9DfC1c3eeOrXB6w/5dIDydLNQaEyww5KalE5jLBZucE=",
    ];

    fn secret(s: &str) -> SigningSecret {
        SigningSecret::parse(s).unwrap()
    }

    fn headers(id: &str, ts: i64, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER_ID, id.parse().unwrap());
        h.insert(HEADER_TIMESTAMP, ts.to_string().parse().unwrap());
        h.insert(HEADER_SIGNATURE, sig.parse().unwrap());
        h
    }

    fn vector_headers() -> HeaderMap {
        headers(VECTOR_ID, VECTOR_TS, VECTOR_SIG)
    }

    #[test]
    fn reproduces_the_standard_webhooks_test_vector() {
        assert_eq!(
            secret(VECTOR_SECRET).sign(VECTOR_ID, VECTOR_TS, VECTOR_BODY),
            VECTOR_SIG
        );
    }

    #[test]
    fn reproduces_the_svix_library_test_vector() {
        assert_eq!(
            secret(SVIX_SECRET).sign(SVIX_ID_VALUE, SVIX_TS, SVIX_BODY),
            SVIX_SIG
        );
    }

    #[test]
    fn verifies_the_test_vectors() {
        Verifier::new(vec![secret(VECTOR_SECRET)])
            .verify_at(&vector_headers(), VECTOR_BODY, VECTOR_TS)
            .unwrap();
        Verifier::new(vec![secret(SVIX_SECRET)])
            .verify_at(
                &headers(SVIX_ID_VALUE, SVIX_TS, SVIX_SIG),
                SVIX_BODY,
                SVIX_TS + 10,
            )
            .unwrap();
    }

    #[test]
    fn accepts_the_svix_header_names() {
        let mut h = HeaderMap::new();
        h.insert(SVIX_ID, VECTOR_ID.parse().unwrap());
        h.insert(SVIX_TIMESTAMP, VECTOR_TS.to_string().parse().unwrap());
        h.insert(SVIX_SIGNATURE, VECTOR_SIG.parse().unwrap());
        Verifier::new(vec![secret(VECTOR_SECRET)])
            .verify_at(&h, VECTOR_BODY, VECTOR_TS)
            .unwrap();
    }

    #[test]
    fn finds_the_valid_signature_among_decoys_and_other_versions() {
        let sig = format!(
            "{} v2,{} {} {} {}",
            DECOYS[0],
            &SVIX_SIG[3..],
            DECOYS[1],
            SVIX_SIG,
            DECOYS[2]
        );
        Verifier::new(vec![secret(SVIX_SECRET)])
            .verify_at(&headers(SVIX_ID_VALUE, SVIX_TS, &sig), SVIX_BODY, SVIX_TS)
            .unwrap();
    }

    #[test]
    fn decoys_alone_do_not_verify() {
        let sig = DECOYS.join(" ");
        let err = Verifier::new(vec![secret(SVIX_SECRET)])
            .verify_at(&headers(SVIX_ID_VALUE, SVIX_TS, &sig), SVIX_BODY, SVIX_TS)
            .unwrap_err();
        assert_eq!(err, VerifyError::NoMatchingSignature);
    }

    #[test]
    fn only_v1_entries_count() {
        let sig = format!("v2,{}", &VECTOR_SIG[3..]);
        let err = Verifier::new(vec![secret(VECTOR_SECRET)])
            .verify_at(&headers(VECTOR_ID, VECTOR_TS, &sig), VECTOR_BODY, VECTOR_TS)
            .unwrap_err();
        assert_eq!(err, VerifyError::NoSignatures);
    }

    #[test]
    fn rotation_signs_with_every_secret_and_either_verifies() {
        let old = SigningSecret::generate();
        let new = SigningSecret::generate();
        let signer = Signer::new(vec![old.clone(), new.clone()]);
        let mut h = HeaderMap::new();
        signer.apply(&mut h, "msg_1", 1_700_000_000, b"{}").unwrap();

        let sig = h[HEADER_SIGNATURE].to_str().unwrap();
        assert_eq!(sig.split(' ').count(), 2);
        assert_eq!(
            sig,
            format!(
                "{} {}",
                old.sign("msg_1", 1_700_000_000, b"{}"),
                new.sign("msg_1", 1_700_000_000, b"{}")
            )
        );
        assert_eq!(h[HEADER_ID], "msg_1");
        assert_eq!(h[HEADER_TIMESTAMP], "1700000000");

        for s in [old, new] {
            Verifier::new(vec![s])
                .verify_at(&h, b"{}", 1_700_000_000)
                .unwrap();
        }
    }

    #[test]
    fn verifier_with_several_secrets_accepts_a_signature_from_any() {
        let a = SigningSecret::generate();
        let b = SigningSecret::generate();
        let mut h = HeaderMap::new();
        Signer::new(vec![b.clone()])
            .apply(&mut h, "msg_2", 100, b"x")
            .unwrap();
        Verifier::new(vec![a, b]).verify_at(&h, b"x", 100).unwrap();
    }

    #[test]
    fn wrong_secret_fails() {
        let err = Verifier::new(vec![SigningSecret::generate()])
            .verify_at(&vector_headers(), VECTOR_BODY, VECTOR_TS)
            .unwrap_err();
        assert_eq!(err, VerifyError::NoMatchingSignature);
        assert!(err.to_string().contains("wrong secret"));
    }

    #[test]
    fn verifier_without_secrets_matches_nothing() {
        let err = Verifier::new(vec![])
            .verify_at(&vector_headers(), VECTOR_BODY, VECTOR_TS)
            .unwrap_err();
        assert_eq!(err, VerifyError::NoMatchingSignature);
    }

    #[test]
    fn changed_body_fails() {
        let err = Verifier::new(vec![secret(VECTOR_SECRET)])
            .verify_at(&vector_headers(), br#"{"test": 2432232315}"#, VECTOR_TS)
            .unwrap_err();
        assert_eq!(err, VerifyError::NoMatchingSignature);
    }

    #[test]
    fn changed_id_or_timestamp_fails() {
        let v = Verifier::new(vec![secret(VECTOR_SECRET)]);
        let other_id = headers("msg_other", VECTOR_TS, VECTOR_SIG);
        assert_eq!(
            v.verify_at(&other_id, VECTOR_BODY, VECTOR_TS),
            Err(VerifyError::NoMatchingSignature)
        );
        let other_ts = headers(VECTOR_ID, VECTOR_TS + 1, VECTOR_SIG);
        assert_eq!(
            v.verify_at(&other_ts, VECTOR_BODY, VECTOR_TS),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn old_timestamp_fails_with_its_age() {
        let v = Verifier::new(vec![secret(VECTOR_SECRET)]);
        let err = v
            .verify_at(&vector_headers(), VECTOR_BODY, VECTOR_TS + 412)
            .unwrap_err();
        assert_eq!(
            err,
            VerifyError::TimestampTooOld {
                skew_secs: 412,
                tolerance_secs: 300
            }
        );
        assert_eq!(
            err.to_string(),
            "timestamp is 412 s old, beyond the 300 s tolerance: clock skew or a replayed request"
        );
        // Exactly at the edge is still accepted.
        v.verify_at(&vector_headers(), VECTOR_BODY, VECTOR_TS + 300)
            .unwrap();
    }

    #[test]
    fn future_timestamp_fails_with_its_skew() {
        let v = Verifier::new(vec![secret(VECTOR_SECRET)]);
        let err = v
            .verify_at(&vector_headers(), VECTOR_BODY, VECTOR_TS - 301)
            .unwrap_err();
        assert_eq!(
            err,
            VerifyError::TimestampTooNew {
                skew_secs: 301,
                tolerance_secs: 300
            }
        );
        v.verify_at(&vector_headers(), VECTOR_BODY, VECTOR_TS - 300)
            .unwrap();
    }

    #[test]
    fn tolerance_can_be_changed() {
        let v = Verifier::new(vec![secret(VECTOR_SECRET)]).with_tolerance(Duration::from_secs(10));
        assert!(matches!(
            v.verify_at(&vector_headers(), VECTOR_BODY, VECTOR_TS + 11),
            Err(VerifyError::TimestampTooOld {
                skew_secs: 11,
                tolerance_secs: 10
            })
        ));
        let lenient = Verifier::new(vec![secret(VECTOR_SECRET)])
            .with_tolerance(Duration::from_secs(u64::MAX));
        lenient
            .verify_at(&vector_headers(), VECTOR_BODY, i64::MAX)
            .unwrap();
    }

    #[test]
    fn verify_uses_the_system_clock() {
        let s = SigningSecret::generate();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let mut h = HeaderMap::new();
        Signer::new(vec![s.clone()])
            .apply(&mut h, "msg_now", now, b"body")
            .unwrap();
        Verifier::new(vec![s.clone()]).verify(&h, b"body").unwrap();

        let mut stale = HeaderMap::new();
        Signer::new(vec![s.clone()])
            .apply(&mut stale, "msg_now", now - 3600, b"body")
            .unwrap();
        assert!(matches!(
            Verifier::new(vec![s]).verify(&stale, b"body"),
            Err(VerifyError::TimestampTooOld { .. })
        ));
    }

    #[test]
    fn missing_headers_are_named() {
        let v = Verifier::new(vec![secret(VECTOR_SECRET)]);
        for name in [HEADER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE] {
            let mut h = vector_headers();
            h.remove(name);
            let err = v.verify_at(&h, VECTOR_BODY, VECTOR_TS).unwrap_err();
            assert_eq!(err, VerifyError::MissingHeader(name));
            assert!(err.to_string().contains(name));
        }
    }

    #[test]
    fn invalid_timestamps_are_rejected() {
        let v = Verifier::new(vec![secret(VECTOR_SECRET)]);
        for bad in ["hello", "", "1614265330.5", "-1", "99999999999999999999"] {
            let mut h = vector_headers();
            h.insert(HEADER_TIMESTAMP, bad.parse().unwrap());
            assert_eq!(
                v.verify_at(&h, VECTOR_BODY, VECTOR_TS),
                Err(VerifyError::InvalidTimestamp),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn malformed_signature_entries_do_not_panic() {
        let v = Verifier::new(vec![secret(VECTOR_SECRET)]);
        let cases = [
            "",
            " ",
            "v1",
            "v1,",
            ",",
            ",,,",
            "v1,dawfeoifkpqwoekfpqoekf",
            &VECTOR_SIG[..8],
            "v1,!!!!",
            "v1,AAAA",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=AAAA",
            "v1 g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "\tv1,x",
        ];
        for case in cases {
            let mut h = vector_headers();
            h.insert(
                HEADER_SIGNATURE,
                HeaderValue::from_bytes(case.as_bytes()).unwrap(),
            );
            assert_eq!(
                v.verify_at(&h, VECTOR_BODY, VECTOR_TS),
                Err(VerifyError::NoSignatures),
                "{case:?}"
            );
        }
        // Non-UTF-8 bytes in every header must not panic either.
        let mut h = HeaderMap::new();
        h.insert(HEADER_ID, HeaderValue::from_bytes(b"\xffmsg").unwrap());
        h.insert(HEADER_TIMESTAMP, HeaderValue::from_bytes(b"\xff").unwrap());
        h.insert(
            HEADER_SIGNATURE,
            HeaderValue::from_bytes(b"v1,\xff").unwrap(),
        );
        assert_eq!(
            v.verify_at(&h, VECTOR_BODY, VECTOR_TS),
            Err(VerifyError::InvalidTimestamp)
        );
    }

    #[test]
    fn non_utf8_id_is_signed_as_raw_bytes() {
        let s = secret(VECTOR_SECRET);
        let mac = s.mac(b"\xffid", 5, b"b");
        let sig = format!("v1,{}", STANDARD.encode(mac));
        let mut h = headers("x", 5, &sig);
        h.insert(HEADER_ID, HeaderValue::from_bytes(b"\xffid").unwrap());
        Verifier::new(vec![s]).verify_at(&h, b"b", 5).unwrap();
    }

    #[test]
    fn apply_refuses_an_unsendable_id_and_leaves_headers_alone() {
        let mut h = HeaderMap::new();
        let err = Signer::new(vec![SigningSecret::generate()])
            .apply(&mut h, "msg\n1", 1, b"")
            .unwrap_err();
        assert_eq!(err, InvalidMessageId);
        assert!(h.is_empty());
    }

    #[test]
    fn apply_replaces_earlier_values() {
        let s = SigningSecret::generate();
        let mut h = headers("old", 1, "v1,old");
        Signer::new(vec![s.clone()])
            .apply(&mut h, "new", 2, b"")
            .unwrap();
        assert_eq!(h.get_all(HEADER_ID).iter().count(), 1);
        assert_eq!(h[HEADER_ID], "new");
        Verifier::new(vec![s]).verify_at(&h, b"", 2).unwrap();
    }

    #[test]
    fn secrets_parse_and_round_trip() {
        let s = secret(VECTOR_SECRET);
        assert_eq!(s.to_whsec(), VECTOR_SECRET);
        assert_eq!(s.key.len(), 24);

        let g = SigningSecret::generate();
        assert_eq!(g.key.len(), 32);
        assert!(g.to_whsec().starts_with("whsec_"));
        assert_eq!(secret(&g.to_whsec()).key, g.key);
        assert_ne!(SigningSecret::generate().key, g.key);

        // Unpadded base64 and a trailing newline are both tolerated.
        let unpadded = g.to_whsec().trim_end_matches('=').to_owned();
        assert_eq!(secret(&unpadded).key, g.key);
        assert_eq!(secret(&format!("{VECTOR_SECRET}\n")).key, s.key);
    }

    #[test]
    fn bad_secrets_are_rejected() {
        assert_eq!(
            SigningSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err(),
            SecretError::MissingPrefix
        );
        assert_eq!(
            SigningSecret::parse("").unwrap_err(),
            SecretError::MissingPrefix
        );
        assert_eq!(
            SigningSecret::parse("whsec_").unwrap_err(),
            SecretError::Empty
        );
        assert_eq!(
            SigningSecret::parse("whsec_not base64!").unwrap_err(),
            SecretError::InvalidBase64
        );
        assert!(SigningSecret::from_bytes(vec![]).is_none());
        assert!(SigningSecret::from_bytes(vec![1]).is_some());
    }

    #[test]
    fn debug_does_not_reveal_the_key() {
        let s = secret(VECTOR_SECRET);
        let shown = format!(
            "{s:?} {:?} {:?}",
            Signer::new(vec![s.clone()]),
            Verifier::new(vec![s.clone()])
        );
        assert!(shown.contains("SigningSecret(<redacted>)"));
        assert!(!shown.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
        assert!(!shown.contains(&format!("{:?}", s.key)), "{shown}");
        let err = SigningSecret::parse("whsec_sec ret").unwrap_err();
        assert!(!err.to_string().contains("sec ret"));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn secret() -> SigningSecret {
        SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()
    }

    fn headers(id: &[u8], timestamp: &[u8], signature: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            (HEADER_ID, id),
            (HEADER_TIMESTAMP, timestamp),
            (HEADER_SIGNATURE, signature),
        ] {
            // Only what HTTP can carry reaches a receiver.
            if let Ok(value) = HeaderValue::from_bytes(value) {
                headers.insert(name, value);
            }
        }
        headers
    }

    proptest! {
        /// Whatever a sender puts in the three headers and the body, verification
        /// answers Ok or an error.
        #[test]
        fn verification_never_panics(
            id in prop::collection::vec(any::<u8>(), 0..64),
            timestamp in prop::collection::vec(any::<u8>(), 0..24),
            signature in prop::collection::vec(any::<u8>(), 0..200),
            body in prop::collection::vec(any::<u8>(), 0..256),
            now in any::<i64>(),
        ) {
            let verifier = Verifier::new(vec![secret()]);
            let _ = verifier.verify_at(&headers(&id, &timestamp, &signature), &body, now);
        }

        /// Signature lists in the Standard Webhooks shape, with junk entries mixed in.
        #[test]
        fn signature_lists_never_panic(entries in prop::collection::vec("(v1|v1a|v2|)[,]?[A-Za-z0-9+/=]{0,50}", 0..6)) {
            let list = entries.join(" ");
            let verifier = Verifier::new(vec![secret()]);
            let _ = verifier.verify_at(&headers(b"msg", b"1000", list.as_bytes()), b"{}", 1000);
        }

        #[test]
        fn secrets_parse_or_refuse(input in any::<String>()) {
            let _ = SigningSecret::parse(&input);
        }

        #[test]
        fn secrets_round_trip(key in prop::collection::vec(any::<u8>(), 1..64)) {
            let secret = SigningSecret::from_bytes(key.clone()).unwrap();
            let parsed = SigningSecret::parse(&secret.to_whsec()).unwrap();
            prop_assert_eq!(parsed.sign("id", 1, b"x"), secret.sign("id", 1, b"x"));
        }

        /// What the signer signs verifies, among other entries; any other body,
        /// id or secret does not.
        #[test]
        fn signed_requests_verify_and_altered_ones_do_not(
            id in "[!-~]{1,40}",
            timestamp in 0i64..4_000_000_000,
            body in prop::collection::vec(any::<u8>(), 0..256),
            flip in any::<prop::sample::Index>(),
        ) {
            let signer = Signer::new(vec![secret(), SigningSecret::generate()]);
            let signature = signer.signature_header(&id, timestamp, &body);
            let map = headers(id.as_bytes(), timestamp.to_string().as_bytes(), signature.as_bytes());
            let verifier = Verifier::new(vec![secret()]);
            prop_assert_eq!(verifier.verify_at(&map, &body, timestamp), Ok(()));

            let mut altered = body.clone();
            if altered.is_empty() {
                altered.push(0);
            } else {
                let i = flip.index(altered.len());
                altered[i] ^= 0x01;
            }
            prop_assert_eq!(
                verifier.verify_at(&map, &altered, timestamp),
                Err(VerifyError::NoMatchingSignature)
            );
            let other = Verifier::new(vec![SigningSecret::generate()]);
            prop_assert!(other.verify_at(&map, &body, timestamp).is_err());
        }
    }
}
