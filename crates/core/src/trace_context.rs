//! W3C trace context (`traceparent`) carried with a task from the client's request to
//! every request Tern sends for it, so a receiver sees the client's trace id.
//!
//! The ingress keeps a valid incoming `traceparent`'s trace id (or starts a new trace)
//! and stores the header value of its own span in the task; the task message carries it
//! (as a field, so every republish keeps it, and as a NATS header), and each outbound
//! call sends a child of it. Only the W3C header format is handled here; the spans
//! themselves are [`crate::task_span`]'s business.

use std::fmt;

/// Name of the header, on HTTP requests and NATS messages alike.
pub const HEADER: &str = "traceparent";

/// A parsed `traceparent` (version 00).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace every span of the task belongs to.
    pub trace_id: [u8; 16],
    /// The span this one descends from.
    pub parent_id: [u8; 8],
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceParent {
    /// Parses a header value; `None` for anything the W3C spec says to ignore.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        // Version 00 has exactly four fields; later versions may append more.
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut parent_id = [0u8; 8];
        let mut flag = [0u8; 1];
        let lower_hex = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !(lower_hex(version) && lower_hex(trace) && lower_hex(parent) && lower_hex(flags)) {
            return None;
        }
        hex::decode_to_slice(trace, &mut trace_id).ok()?;
        hex::decode_to_slice(parent, &mut parent_id).ok()?;
        hex::decode_to_slice(flags, &mut flag).ok()?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            flags: flag[0],
        })
    }

    /// A new trace, sampled, for a request that brought none.
    pub fn new_root() -> Self {
        let random = uuid::Uuid::new_v4();
        Self {
            // Never all zeros (invalid): a v4 UUID has non-zero version bits.
            trace_id: *random.as_bytes(),
            parent_id: new_span_id(),
            flags: 1,
        }
    }

    /// A span of the same trace whose parent is this one.
    pub fn child(&self) -> Self {
        Self {
            parent_id: new_span_id(),
            ..*self
        }
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.parent_id),
            self.flags
        )
    }
}

/// A random non-zero span id.
fn new_span_id() -> [u8; 8] {
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    let mut id = [0u8; 8];
    id.copy_from_slice(&bytes[8..]);
    // Bytes 8.. of a v4 UUID carry the variant bits, so the id is never all zeros.
    id
}

/// The `traceparent` to store with a task accepted from a request that carried
/// `incoming` (the header value, if any): a child of a valid one, else a new trace.
pub fn for_accepted_task(incoming: Option<&str>) -> String {
    incoming
        .and_then(TraceParent::parse)
        .map(|parent| parent.child())
        .unwrap_or_else(TraceParent::new_root)
        .to_string()
}

/// The `traceparent` of one outbound call of a task stored with `stored`; `None` when
/// the task has none (accepted before trace context existed).
pub fn for_outbound_call(stored: &str) -> Option<String> {
    let parent = TraceParent::parse(stored)?;
    // While spans are exported the call is a child of the span making it, so the
    // receiver's spans hang under Tern's in the collector.
    Some(crate::task_span::current_traceparent().unwrap_or_else(|| parent.child().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_prints_the_w3c_example() {
        let parsed = TraceParent::parse(SAMPLE).expect("valid");
        assert_eq!(parsed.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parsed.flags, 1);
        assert_eq!(parsed.to_string(), SAMPLE);
    }

    #[test]
    fn refuses_what_the_spec_says_to_ignore() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-zzf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn accepted_tasks_keep_the_clients_trace_or_start_one() {
        let kept = TraceParent::parse(&for_accepted_task(Some(SAMPLE))).expect("valid");
        assert_eq!(kept.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(kept.to_string(), SAMPLE, "a new span of the same trace");
        let fresh = TraceParent::parse(&for_accepted_task(Some("garbage"))).expect("valid");
        assert_ne!(fresh.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(TraceParent::parse(&for_accepted_task(None)).is_some());
    }

    #[test]
    fn outbound_calls_are_children_of_the_task() {
        let call = for_outbound_call(SAMPLE).expect("child");
        let call = TraceParent::parse(&call).expect("valid");
        assert_eq!(call.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(
            call.parent_id,
            TraceParent::parse(SAMPLE).expect("valid").parent_id
        );
        assert_eq!(for_outbound_call(""), None);
    }
}
