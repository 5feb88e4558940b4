//! Parser for a captured raw HTTP/1.x request: request line, headers, blank line, body.
//!
//! Lenient where captures are commonly imperfect (LF instead of CRLF line endings,
//! blank lines before the request line, no request line at all, a trailing newline
//! an editor added after the body), strict where a wrong guess would change the bytes
//! that were signed (conflicting Content-Length values, a malformed chunked body).
//! Whatever it had to assume is reported in [`RawRequest::notes`].

use std::fmt;

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue};

/// A parsed request.
#[derive(Debug)]
pub struct RawRequest {
    /// The request line, when the capture has one.
    pub request_line: Option<RequestLine>,
    pub headers: HeaderMap,
    /// The body as it was signed: after chunked decoding, cut to Content-Length.
    pub body: Vec<u8>,
    /// What the parser assumed or repaired, for the user to judge.
    pub notes: Vec<String>,
}

/// `METHOD target HTTP/x.y` (the version may be missing in hand-written captures).
#[derive(Debug, PartialEq, Eq)]
pub struct RequestLine {
    pub method: String,
    pub target: String,
    pub version: Option<String>,
}

impl fmt::Display for RequestLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.target)?;
        if let Some(version) = &self.version {
            write!(f, " {version}")?;
        }
        Ok(())
    }
}

/// Why a capture could not be read. Line numbers count from 1.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    Empty,
    BadFirstLine { line: usize, text: String },
    BadHeader { line: usize, reason: String },
    BadContentLength(String),
    BadChunked(String),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Empty => write!(f, "the input is empty: expected a raw HTTP request"),
            ParseError::BadFirstLine { line, text } => write!(
                f,
                "line {line}: expected a request line like `POST /webhook HTTP/1.1` or a header, found {text:?}"
            ),
            ParseError::BadHeader { line, reason } => write!(f, "line {line}: {reason}"),
            ParseError::BadContentLength(reason) => write!(f, "Content-Length: {reason}"),
            ParseError::BadChunked(reason) => write!(f, "chunked body: {reason}"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Parses a captured request.
pub fn parse(input: &[u8]) -> Result<RawRequest, ParseError> {
    let mut notes = Vec::new();

    // Split the head into lines, up to the first blank line after some content.
    let mut head: Vec<(usize, &[u8])> = Vec::new();
    let mut body_start = None;
    let mut pos = 0;
    let mut line_no = 0;
    let mut crlf = 0usize;
    let mut lf_only = 0usize;
    while pos < input.len() {
        let (raw_line, next) = split_line_at(input, pos);
        let ended_by_newline = input[next - 1] == b'\n';
        line_no += 1;
        pos = next;
        let line = match raw_line.strip_suffix(b"\r") {
            Some(stripped) => {
                crlf += 1;
                stripped
            }
            None => {
                if ended_by_newline {
                    lf_only += 1;
                }
                raw_line
            }
        };
        if line.is_empty() {
            if head.is_empty() {
                continue; // blank lines before the request line are ignored
            }
            body_start = Some(pos);
            break;
        }
        head.push((line_no, line));
    }
    if head.is_empty() {
        return Err(ParseError::Empty);
    }
    if lf_only > 0 && crlf == 0 {
        notes.push("lines end with LF, not CRLF; read as HTTP all the same".to_owned());
    }

    // The first line: a request line, or already a header.
    let mut lines = head.into_iter().peekable();
    let mut request_line = None;
    if let Some(&(first_no, first)) = lines.peek() {
        if let Some(rl) = parse_request_line(first) {
            request_line = Some(rl);
            lines.next();
        } else if split_header(first).is_ok() {
            notes.push("no request line; read headers from the first line".to_owned());
        } else {
            return Err(ParseError::BadFirstLine {
                line: first_no,
                text: String::from_utf8_lossy(first).into_owned(),
            });
        }
    }

    // Headers, joining obsolete folded continuation lines to the previous one.
    let mut fields: Vec<(HeaderName, Vec<u8>, usize)> = Vec::new();
    for (no, line) in lines {
        if matches!(line.first(), Some(b' ' | b'\t')) {
            match fields.last_mut() {
                Some((_, value, _)) => {
                    value.push(b' ');
                    value.extend_from_slice(trim_ows(line));
                    notes.push(format!(
                        "line {no}: folded header line joined to the one before"
                    ));
                    continue;
                }
                None => {
                    return Err(ParseError::BadHeader {
                        line: no,
                        reason: "a header line starts with whitespace".to_owned(),
                    });
                }
            }
        }
        let (name, value) =
            split_header(line).map_err(|reason| ParseError::BadHeader { line: no, reason })?;
        fields.push((name, value.to_vec(), no));
    }
    let mut headers = HeaderMap::new();
    for (name, value, no) in fields {
        let value = HeaderValue::from_bytes(&value).map_err(|_| ParseError::BadHeader {
            line: no,
            reason: format!("the value of {name} has characters a header cannot hold"),
        })?;
        headers.append(name, value);
    }

    // The body, as the sender signed it.
    let mut body = match body_start {
        Some(start) => input[start..].to_vec(),
        None => {
            notes.push(
                "no blank line after the headers: read as a request with an empty body".to_owned(),
            );
            Vec::new()
        }
    };
    if is_chunked(&headers) {
        body = decode_chunked(&body)?;
        notes.push(format!("decoded the chunked body ({} bytes)", body.len()));
    } else if let Some(expected) = content_length(&headers)? {
        if body.len() > expected {
            notes.push(format!(
                "ignored {} byte(s) after the {expected} announced by Content-Length (often a newline an editor added)",
                body.len() - expected
            ));
            body.truncate(expected);
        } else if body.len() < expected {
            notes.push(format!(
                "the body has {} byte(s) but Content-Length announces {expected}: the capture looks cut short",
                body.len()
            ));
        }
    }

    Ok(RawRequest {
        request_line,
        headers,
        body,
        notes,
    })
}

/// The line starting at `pos` (without its `\n`) and where the next line starts.
fn split_line_at(input: &[u8], pos: usize) -> (&[u8], usize) {
    match input[pos..].iter().position(|&b| b == b'\n') {
        Some(i) => (&input[pos..pos + i], pos + i + 1),
        None => (&input[pos..], input.len()),
    }
}

fn parse_request_line(line: &[u8]) -> Option<RequestLine> {
    let text = std::str::from_utf8(line).ok()?;
    let parts: Vec<&str> = text.split(' ').filter(|p| !p.is_empty()).collect();
    let (method, target, version) = match parts.as_slice() {
        [m, t] => (*m, *t, None),
        [m, t, v] if v.starts_with("HTTP/") => (*m, *t, Some((*v).to_owned())),
        _ => return None,
    };
    let method_ok = !method.is_empty()
        && method
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_');
    let target_ok = target.starts_with('/')
        || target.starts_with("http://")
        || target.starts_with("https://")
        || target == "*";
    if !method_ok || !target_ok {
        return None;
    }
    Some(RequestLine {
        method: method.to_owned(),
        target: target.to_owned(),
        version,
    })
}

fn split_header(line: &[u8]) -> Result<(HeaderName, &[u8]), String> {
    let colon = line.iter().position(|&b| b == b':').ok_or_else(|| {
        format!(
            "expected `name: value`, found {:?}",
            String::from_utf8_lossy(line)
        )
    })?;
    let raw_name = &line[..colon];
    if raw_name.is_empty() {
        return Err("a header line has an empty name".to_owned());
    }
    if matches!(raw_name.last(), Some(b' ' | b'\t')) {
        return Err(format!(
            "whitespace between the header name {:?} and ':'",
            String::from_utf8_lossy(raw_name).trim_end()
        ));
    }
    let name = HeaderName::from_bytes(raw_name).map_err(|_| {
        format!(
            "invalid header name {:?}",
            String::from_utf8_lossy(raw_name)
        )
    })?;
    Ok((name, trim_ows(&line[colon + 1..])))
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// True when the last transfer coding is `chunked`.
fn is_chunked(headers: &HeaderMap) -> bool {
    let mut last = None;
    for value in headers.get_all(TRANSFER_ENCODING) {
        if let Ok(text) = value.to_str() {
            for coding in text.split(',') {
                last = Some(coding.trim());
            }
        }
    }
    last.is_some_and(|coding| coding.eq_ignore_ascii_case("chunked"))
}

fn content_length(headers: &HeaderMap) -> Result<Option<usize>, ParseError> {
    let mut found: Option<usize> = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        let text = value
            .to_str()
            .map_err(|_| ParseError::BadContentLength("not a number".to_owned()))?;
        for part in text.split(',') {
            let part = part.trim();
            let n: usize = part
                .parse()
                .map_err(|_| ParseError::BadContentLength(format!("{part:?} is not a number")))?;
            match found {
                Some(prev) if prev != n => {
                    return Err(ParseError::BadContentLength(format!(
                        "conflicting values {prev} and {n}"
                    )));
                }
                _ => found = Some(n),
            }
        }
    }
    Ok(found)
}

fn decode_chunked(mut data: &[u8]) -> Result<Vec<u8>, ParseError> {
    let mut out = Vec::new();
    loop {
        if data.is_empty() {
            return Err(ParseError::BadChunked(
                "ended before the last (zero-size) chunk".to_owned(),
            ));
        }
        let (size_line, next) = split_line_at(data, 0);
        let size_line = size_line.strip_suffix(b"\r").unwrap_or(size_line);
        let size_text = std::str::from_utf8(size_line)
            .ok()
            .and_then(|s| s.split(';').next())
            .map(str::trim)
            .unwrap_or_default();
        if size_text.is_empty() || !size_text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseError::BadChunked(format!(
                "bad chunk size line {:?}",
                String::from_utf8_lossy(size_line)
            )));
        }
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| ParseError::BadChunked(format!("chunk size {size_text} is too large")))?;
        data = &data[next..];
        if size == 0 {
            return Ok(out); // trailers, if any, are not part of the signed body
        }
        if data.len() < size {
            return Err(ParseError::BadChunked(format!(
                "a chunk announces {size} bytes but only {} remain",
                data.len()
            )));
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size..];
        data = data
            .strip_prefix(b"\r\n")
            .or_else(|| data.strip_prefix(b"\n"))
            .ok_or_else(|| {
                ParseError::BadChunked("no line break after a chunk's data".to_owned())
            })?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIGNED: &str = "POST /webhook HTTP/1.1\r\n\
        host: 127.0.0.1:9999\r\n\
        content-type: application/json\r\n\
        webhook-id: msg_2b8f\r\n\
        webhook-timestamp: 1700000000\r\n\
        webhook-signature: v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=\r\n\
        content-length: 15\r\n\
        \r\n\
        {\"hello\":\"wo\"}\n";

    #[test]
    fn parses_a_crlf_request() {
        let req = parse(SIGNED.as_bytes()).expect("parses");
        assert_eq!(
            req.request_line,
            Some(RequestLine {
                method: "POST".into(),
                target: "/webhook".into(),
                version: Some("HTTP/1.1".into()),
            })
        );
        assert_eq!(
            req.headers.get("webhook-id").map(|v| v.as_bytes()),
            Some(&b"msg_2b8f"[..])
        );
        assert_eq!(req.headers.len(), 6);
        assert_eq!(req.body, b"{\"hello\":\"wo\"}\n");
        assert!(req.notes.is_empty(), "{:?}", req.notes);
    }

    #[test]
    fn accepts_lf_line_endings_and_leading_blank_lines() {
        let input = "\n\nPOST /webhook HTTP/1.1\nwebhook-id: a\nwebhook-timestamp: 1\n\n{\"x\":1}";
        let req = parse(input.as_bytes()).expect("parses");
        assert_eq!(
            req.request_line.as_ref().map(|r| r.method.as_str()),
            Some("POST")
        );
        assert_eq!(
            req.headers.get("webhook-timestamp").map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        assert_eq!(req.body, b"{\"x\":1}");
        assert!(
            req.notes.iter().any(|n| n.contains("LF")),
            "{:?}",
            req.notes
        );
    }

    #[test]
    fn body_bytes_are_kept_exactly() {
        let mut input = b"POST / HTTP/1.1\r\n\r\n".to_vec();
        let body = b"line one\r\n\r\nline two\n\xff\x00binary\r\n";
        input.extend_from_slice(body);
        let req = parse(&input).expect("parses");
        assert_eq!(req.body, body);
    }

    #[test]
    fn headers_without_a_request_line() {
        let req = parse(b"webhook-id: a\r\nwebhook-signature: v1,abc\r\n\r\nbody").expect("parses");
        assert!(req.request_line.is_none());
        assert_eq!(req.headers.len(), 2);
        assert_eq!(req.body, b"body");
        assert!(req.notes.iter().any(|n| n.contains("no request line")));
    }

    #[test]
    fn request_line_without_version() {
        let req = parse(b"POST /hook\nwebhook-id: a\n\nx").expect("parses");
        let rl = req.request_line.expect("request line");
        assert_eq!(rl.target, "/hook");
        assert_eq!(rl.version, None);
    }

    #[test]
    fn content_length_cuts_an_added_trailing_newline() {
        let req = parse(b"POST / HTTP/1.1\r\ncontent-length: 4\r\n\r\nbody\n").expect("parses");
        assert_eq!(req.body, b"body");
        assert!(
            req.notes.iter().any(|n| n.contains("ignored 1 byte")),
            "{:?}",
            req.notes
        );
    }

    #[test]
    fn short_body_is_kept_and_reported() {
        let req = parse(b"POST / HTTP/1.1\r\ncontent-length: 10\r\n\r\nbody").expect("parses");
        assert_eq!(req.body, b"body");
        assert!(
            req.notes.iter().any(|n| n.contains("cut short")),
            "{:?}",
            req.notes
        );
    }

    #[test]
    fn conflicting_content_lengths_are_an_error() {
        let err = parse(b"POST / HTTP/1.1\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\nbody")
            .expect_err("conflict");
        assert!(matches!(err, ParseError::BadContentLength(_)), "{err}");
        let err = parse(b"POST / HTTP/1.1\r\ncontent-length: four\r\n\r\nbody").expect_err("nan");
        assert!(matches!(err, ParseError::BadContentLength(_)), "{err}");
    }

    #[test]
    fn decodes_a_chunked_body() {
        let input = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
            5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: t\r\n\r\n";
        let req = parse(input).expect("parses");
        assert_eq!(req.body, b"hello, world");
    }

    #[test]
    fn bad_chunked_bodies_are_errors() {
        for body in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"10\r\nshort\r\n",
            b"5\r\nhello",
            b"5\r\nhelloX0\r\n\r\n",
        ] {
            let mut input = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            input.extend_from_slice(body);
            let err = parse(&input).expect_err("bad chunked");
            assert!(matches!(err, ParseError::BadChunked(_)), "{err}");
        }
    }

    #[test]
    fn folded_header_lines_are_joined() {
        let req = parse(b"POST / HTTP/1.1\r\nwebhook-signature: v1,aaa\r\n  v1,bbb\r\n\r\n")
            .expect("parses");
        assert_eq!(
            req.headers.get("webhook-signature").map(|v| v.as_bytes()),
            Some(&b"v1,aaa v1,bbb"[..])
        );
    }

    #[test]
    fn repeated_headers_are_all_kept() {
        let req = parse(b"POST / HTTP/1.1\r\nx-a: 1\r\nX-A: 2\r\n\r\n").expect("parses");
        let values: Vec<_> = req
            .headers
            .get_all("x-a")
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect();
        assert_eq!(values, vec![b"1".to_vec(), b"2".to_vec()]);
    }

    #[test]
    fn header_values_are_trimmed() {
        let req = parse(b"POST / HTTP/1.1\r\nwebhook-id: \t msg_1 \t\r\n\r\n").expect("parses");
        assert_eq!(
            req.headers.get("webhook-id").map(|v| v.as_bytes()),
            Some(&b"msg_1"[..])
        );
    }

    #[test]
    fn headers_only_without_blank_line() {
        let req = parse(b"POST / HTTP/1.1\r\nwebhook-id: a").expect("parses");
        assert!(req.body.is_empty());
        assert!(req.notes.iter().any(|n| n.contains("no blank line")));
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(parse(b"").expect_err("empty"), ParseError::Empty);
        assert_eq!(parse(b"\r\n\n").expect_err("blank"), ParseError::Empty);

        let err = parse(b"hello world\r\n\r\n").expect_err("garbage");
        assert!(
            matches!(err, ParseError::BadFirstLine { line: 1, .. }),
            "{err}"
        );

        let err = parse(b"POST / HTTP/1.1\r\nwebhook-id a\r\n\r\n").expect_err("no colon");
        assert!(
            matches!(err, ParseError::BadHeader { line: 2, .. }),
            "{err}"
        );

        let err = parse(b"POST / HTTP/1.1\r\nwebhook-id : a\r\n\r\n").expect_err("space");
        assert!(
            matches!(err, ParseError::BadHeader { line: 2, .. }),
            "{err}"
        );

        let err = parse(b"POST / HTTP/1.1\r\nbad name: a\r\n\r\n").expect_err("bad name");
        assert!(
            matches!(err, ParseError::BadHeader { line: 2, .. }),
            "{err}"
        );

        let err = parse(b"POST / HTTP/1.1\r\nx: a\x01b\r\n\r\n").expect_err("control char");
        assert!(
            matches!(err, ParseError::BadHeader { line: 2, .. }),
            "{err}"
        );

        let err = parse(b"  x: folded-first\r\n\r\n").expect_err("fold first");
        assert!(
            matches!(err, ParseError::BadFirstLine { line: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn request_line_displays_as_written() {
        let req = parse(b"POST /webhook?x=1 HTTP/1.1\r\n\r\n").expect("parses");
        assert_eq!(
            req.request_line.map(|r| r.to_string()).as_deref(),
            Some("POST /webhook?x=1 HTTP/1.1")
        );
    }

    #[test]
    fn error_messages_explain() {
        let err = parse(b"hello world\r\n").expect_err("garbage");
        assert!(err.to_string().contains("request line"), "{err}");
    }
}
