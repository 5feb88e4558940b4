//! Media types (`Content-Type` values) that clients give for raw task bodies.
//!
//! A raw body is delivered with the client's content type as its `Content-Type`
//! header, so only a well-formed `type/subtype` with optional parameters (RFC 9110
//! §8.3.1) is accepted: anything else would reach receivers as a header their HTTP
//! stack may refuse or misread.

/// Longest accepted media type.
pub const MAX_LEN: usize = 255;

/// Why a media type was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMediaType {
    /// Empty or only whitespace.
    #[error("must not be empty")]
    Empty,
    /// Longer than [`MAX_LEN`].
    #[error("must be at most {MAX_LEN} characters")]
    TooLong,
    /// Not `type/subtype[; name=value]*`.
    #[error("must be a media type such as text/plain or application/xml; charset=utf-8")]
    Malformed,
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// `quoted-string`: visible ASCII, space and tab inside quotes, `\` escaping one of them.
fn is_quoted_string(s: &str) -> bool {
    let Some(inner) = s.strip_prefix('"').and_then(|rest| rest.strip_suffix('"')) else {
        return false;
    };
    let mut bytes = inner.bytes();
    while let Some(b) = bytes.next() {
        let ok = match b {
            b'\\' => bytes
                .next()
                .is_some_and(|e| e == b'\t' || (b' '..=b'~').contains(&e)),
            b'"' => false,
            b'\t' | b' '..=b'~' => true,
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Checks `value` and returns it trimmed of surrounding whitespace.
pub fn validate(value: &str) -> Result<&str, InvalidMediaType> {
    let value = value.trim_matches([' ', '\t']);
    if value.is_empty() {
        return Err(InvalidMediaType::Empty);
    }
    if value.len() > MAX_LEN {
        return Err(InvalidMediaType::TooLong);
    }
    // Parameters are split on `;` outside quoted strings only.
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, b) in value.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b';' if !quoted => {
                parts.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    let mut parts = parts.into_iter();
    let essence = parts.next().unwrap_or_default();
    let (kind, subtype) = essence.split_once('/').ok_or(InvalidMediaType::Malformed)?;
    if !is_token(kind) || !is_token(subtype) {
        return Err(InvalidMediaType::Malformed);
    }
    for parameter in parts {
        let parameter = parameter.trim_matches([' ', '\t']);
        let (name, value) = parameter
            .split_once('=')
            .ok_or(InvalidMediaType::Malformed)?;
        if !is_token(name) || !(is_token(value) || is_quoted_string(value)) {
            return Err(InvalidMediaType::Malformed);
        }
    }
    Ok(value)
}

/// True for `application/json` and `application/*+json` (parameters ignored).
pub fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || essence
            .get(..12)
            .is_some_and(|p| p.eq_ignore_ascii_case("application/"))
            && essence
                .get(essence.len().saturating_sub(5)..)
                .is_some_and(|s| s.eq_ignore_ascii_case("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_media_types_with_parameters() {
        for ok in [
            "text/plain",
            "application/octet-stream",
            "application/xml; charset=utf-8",
            "text/csv;charset=UTF-8;header=present",
            "multipart/form-data; boundary=\"a b;c\\\"d\"",
            "application/vnd.api+json",
            "  image/png  ",
        ] {
            assert!(validate(ok).is_ok(), "{ok}");
        }
        assert_eq!(validate(" text/plain ").unwrap(), "text/plain");
    }

    #[test]
    fn refuses_what_is_not_a_media_type() {
        for bad in [
            "",
            "   ",
            "text",
            "text/",
            "/plain",
            "text/plain;",
            "text/plain; charset",
            "text/plain; charset=",
            "text/pl ain",
            "text/plain\r\nx-evil: 1",
            "text/plain; a=\"unterminated",
            "tëxt/plain",
            "text/plain/extra",
        ] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            validate(&format!("text/{}", "a".repeat(300))),
            Err(InvalidMediaType::TooLong)
        );
    }

    #[test]
    fn recognises_json() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/vnd.tern+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/jsonx"));
        assert!(!is_json(""));
        assert!(!is_json("é"));
    }

    proptest! {
        #[test]
        fn never_panics(input in any::<String>()) {
            let _ = validate(&input);
            let _ = is_json(&input);
        }

        /// Whatever is accepted can be sent as a header value.
        #[test]
        fn accepted_values_are_header_values(input in "[ -~\t]{0,80}") {
            if let Ok(value) = validate(&input) {
                prop_assert!(http::HeaderValue::from_str(value).is_ok());
            }
        }

        #[test]
        fn well_formed_types_are_accepted(
            kind in "[a-z][a-z0-9.+-]{0,15}",
            sub in "[a-z][a-z0-9.+-]{0,15}",
            params in proptest::collection::vec(("[a-z]{1,8}", "[A-Za-z0-9-]{1,8}"), 0..3),
        ) {
            let mut text = format!("{kind}/{sub}");
            for (name, value) in params {
                text.push_str(&format!("; {name}={value}"));
            }
            prop_assert_eq!(validate(&text), Ok(text.as_str()));
        }
    }
}
