//! JSON given on the command line: inline, `@file`, or `-` for standard input.

use std::io::Read;

use anyhow::Context;
use serde_json::Value;

/// Parses `arg` as JSON, reading it from a file (`@path`) or standard input (`-`).
pub fn read(arg: &str, what: &str) -> anyhow::Result<Value> {
    let (text, source) = if arg == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .with_context(|| format!("reading {what} from standard input"))?;
        (text, "standard input".to_string())
    } else if let Some(path) = arg.strip_prefix('@') {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {what} from {path}"))?;
        (text, path.to_string())
    } else {
        (arg.to_string(), "the command line".to_string())
    };
    parse(&text).with_context(|| format!("{what} from {source} is not JSON"))
}

fn parse(text: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str(text)
}

/// Like [`read`], but a bare word that is not JSON is taken as a JSON string, so
/// `--payload hello` works without quoting quotes.
pub fn read_lenient(arg: &str, what: &str) -> anyhow::Result<Value> {
    if arg == "-" || arg.starts_with('@') {
        return read(arg, what);
    }
    Ok(parse(arg).unwrap_or_else(|_| Value::String(arg.to_string())))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn inline_file_and_errors() {
        assert_eq!(read(r#"{"a":1}"#, "payload").unwrap(), json!({"a": 1}));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        std::fs::write(&path, "[1, 2]").unwrap();
        assert_eq!(
            read(&format!("@{}", path.display()), "payload").unwrap(),
            json!([1, 2])
        );
        let err = format!("{:#}", read("{nope", "--body").unwrap_err());
        assert!(
            err.starts_with("--body from the command line is not JSON: "),
            "{err}"
        );
        let err = format!("{:#}", read("@/nonexistent/x.json", "--body").unwrap_err());
        assert!(
            err.starts_with("reading --body from /nonexistent/x.json"),
            "{err}"
        );
    }

    #[test]
    fn lenient_takes_bare_words_as_strings() {
        assert_eq!(read_lenient("hello", "p").unwrap(), json!("hello"));
        assert_eq!(read_lenient("42", "p").unwrap(), json!(42));
        assert_eq!(
            read_lenient(r#"{"x":true}"#, "p").unwrap(),
            json!({"x": true})
        );
    }
}
