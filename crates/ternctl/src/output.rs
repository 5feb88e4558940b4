//! Writing results to standard output; a closed pipe (`ternctl … | head`) is not an
//! error worth a panic.

use std::io::Write;

use crate::client::Answer;

/// Prints `text` as it is.
pub fn print(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// Prints the API's JSON answer as it came, one document per line.
pub fn print_json(answer: &Answer) {
    print_raw_json(&answer.raw);
}

/// Prints a JSON document followed by a newline.
pub fn print_raw_json(raw: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(raw.trim_end().as_bytes());
    let _ = out.write_all(b"\n");
}
