//! `.tern/dev.env`: the shell `KEY=value` file `make run` writes, read without a shell.
//!
//! `scripts/lib.sh` writes `export KEY=<value quoted by printf %q>`, so besides plain
//! values this understands single quotes, double quotes, backslash escapes and bash's
//! `$'…'` quoting. Lines it cannot read are reported, never guessed at.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where `make run` writes the file, relative to the repository root.
pub const DEV_ENV: &str = ".tern/dev.env";

/// A line of an env file that is not `[export] KEY=value`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// The variables of an env file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EnvFile {
    /// Where it was read from (none when there was no file).
    pub path: Option<PathBuf>,
    vars: HashMap<String, String>,
}

impl EnvFile {
    /// Parses the text of an env file; later assignments win, as in a shell.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut vars = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let error = |reason| ParseError {
                line: index + 1,
                reason,
            };
            let line = line
                .strip_prefix("export")
                .filter(|rest| rest.starts_with([' ', '\t']))
                .map_or(line, str::trim_start);
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| error("expected KEY=value"))?;
            if !is_name(key) {
                return Err(error("the name before = is not a shell variable name"));
            }
            vars.insert(key.to_string(), unquote(value).map_err(error)?);
        }
        Ok(Self { path: None, vars })
    }

    /// The value of `key`, if the file sets it to something non-empty.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// Reads `.tern/dev.env` from `start` or the nearest parent that has one; an empty
    /// file when none does.
    pub fn discover(start: &Path) -> Result<Self, DiscoverError> {
        let Some(path) = start
            .ancestors()
            .map(|dir| dir.join(DEV_ENV))
            .find(|candidate| candidate.is_file())
        else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(&path).map_err(|source| DiscoverError::Read {
            path: path.clone(),
            source,
        })?;
        let mut file = Self::parse(&text).map_err(|source| DiscoverError::Parse {
            path: path.clone(),
            source,
        })?;
        file.path = Some(path);
        Ok(file)
    }
}

/// Why a discovered env file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// It exists but could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is not a `KEY=value` file.
    #[error("{}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Which line and why.
        source: ParseError,
    },
}

fn is_name(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The value of a shell word: quotes removed, escapes applied. Anything a shell would
/// expand (`$VAR`, backticks) is refused rather than taken literally.
fn unquote(word: &str) -> Result<String, &'static str> {
    let mut out = String::with_capacity(word.len());
    let mut chars = word.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => loop {
                match chars.next() {
                    Some('\'') => break,
                    Some(c) => out.push(c),
                    None => return Err("unterminated single quote"),
                }
            },
            '"' => loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(c @ ('"' | '\\' | '$' | '`')) => out.push(c),
                        Some(c) => {
                            out.push('\\');
                            out.push(c);
                        }
                        None => return Err("unterminated double quote"),
                    },
                    Some('$' | '`') => return Err("shell expansions are not supported"),
                    Some(c) => out.push(c),
                    None => return Err("unterminated double quote"),
                }
            },
            '$' if chars.peek() == Some(&'\'') => {
                chars.next();
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some('\\') => out.push(match chars.next() {
                            Some('n') => '\n',
                            Some('t') => '\t',
                            Some('r') => '\r',
                            Some(c @ ('\\' | '\'' | '"')) => c,
                            _ => return Err("unsupported escape in $'…'"),
                        }),
                        Some(c) => out.push(c),
                        None => return Err("unterminated $'…' quote"),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => out.push(c),
                None => return Err("trailing backslash"),
            },
            '$' | '`' => return Err("shell expansions are not supported"),
            c if c.is_whitespace() => {
                // A comment may follow the value; anything else would be a second word.
                let rest: String = chars.collect();
                let rest = rest.trim_start();
                if rest.is_empty() || rest.starts_with('#') {
                    break;
                }
                return Err("unquoted space in value");
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_make_run_writes() {
        let text = "# Written by scripts/run.sh. Use it with: source .tern/dev.env\n\
                    export TERN_URL=http://127.0.0.1:8080\n\
                    export TERN_API_KEY=tern_dev_abc123\n\
                    export TERN_ADMIN_TOKEN=a\\ b\\$c\n";
        let file = EnvFile::parse(text).unwrap();
        assert_eq!(file.get("TERN_URL"), Some("http://127.0.0.1:8080"));
        assert_eq!(file.get("TERN_API_KEY"), Some("tern_dev_abc123"));
        assert_eq!(file.get("TERN_ADMIN_TOKEN"), Some("a b$c"));
        assert_eq!(file.get("TERN_ADMIN_URL"), None);
    }

    #[test]
    fn quotes_and_plain_assignments() {
        let text = "A='x y $z'\nB=\"q \\\"w\\\" \\$e\"\nC=$'line\\nnext'\nD=  \nE=v # note\n\
                    exported=1\nexport\tF=tab\nA=again\n";
        let file = EnvFile::parse(text).unwrap();
        assert_eq!(file.get("A"), Some("again"), "later assignments win");
        assert_eq!(file.get("B"), Some("q \"w\" $e"));
        assert_eq!(file.get("C"), Some("line\nnext"));
        assert_eq!(file.get("D"), None, "empty counts as unset");
        assert_eq!(file.get("E"), Some("v"));
        assert_eq!(file.get("exported"), Some("1"));
        assert_eq!(file.get("F"), Some("tab"));
        let file = EnvFile::parse("K='x y $z'").unwrap();
        assert_eq!(file.get("K"), Some("x y $z"));
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let cases = [
            ("just words", 1, "expected KEY=value"),
            (
                "\n\n1A=b",
                3,
                "the name before = is not a shell variable name",
            ),
            ("A='open", 1, "unterminated single quote"),
            ("A=\"open", 1, "unterminated double quote"),
            ("A=$HOME/x", 1, "shell expansions are not supported"),
            ("A=\"$HOME\"", 1, "shell expansions are not supported"),
            ("A=two words", 1, "unquoted space in value"),
            ("A=x\\", 1, "trailing backslash"),
        ];
        for (text, line, reason) in cases {
            assert_eq!(
                EnvFile::parse(text),
                Err(ParseError { line, reason }),
                "{text:?}"
            );
        }
    }

    #[test]
    fn discovery_walks_up_to_the_nearest_file() {
        let root = tempfile::tempdir().unwrap();
        let nested = root.path().join("a/b/c");
        std::fs::create_dir_all(&nested).unwrap();
        assert_eq!(EnvFile::discover(&nested).unwrap(), EnvFile::default());

        std::fs::create_dir_all(root.path().join(".tern")).unwrap();
        std::fs::write(root.path().join(DEV_ENV), "export TERN_URL=http://outer\n").unwrap();
        let found = EnvFile::discover(&nested).unwrap();
        assert_eq!(found.get("TERN_URL"), Some("http://outer"));
        assert_eq!(found.path, Some(root.path().join(DEV_ENV)));

        std::fs::create_dir_all(root.path().join("a/.tern")).unwrap();
        std::fs::write(
            root.path().join("a").join(DEV_ENV),
            "TERN_URL=http://inner\n",
        )
        .unwrap();
        assert_eq!(
            EnvFile::discover(&nested).unwrap().get("TERN_URL"),
            Some("http://inner")
        );

        std::fs::write(root.path().join("a").join(DEV_ENV), "TERN_URL\n").unwrap();
        let err = EnvFile::discover(&nested).unwrap_err().to_string();
        assert!(
            err.ends_with("dev.env: line 1: expected KEY=value"),
            "{err}"
        );
    }
}
