//! W3C Trace Context (`traceparent`, `tracestate`): parsed from and written to message headers,
//! and the context of the delivery being handled, so that a publish from inside a receiver
//! continues the consumer's trace.

use std::cell::{Cell, OnceCell};
use std::future::Future;
use std::hash::{BuildHasher, RandomState};

use bytes::Bytes;

use crate::transport::Headers;

/// The `traceparent` header name.
pub const TRACEPARENT: &str = "traceparent";
/// The `tracestate` header name.
pub const TRACESTATE: &str = "tracestate";

tokio::task_local! {
    static CURRENT: Current;
}

/// The current context of a task: known, or worked out from a delivery's headers when first
/// asked for.
pub(crate) enum Current {
    Known(TraceContext),
    /// A delivery whose span nobody records: its context matters only to a publish from
    /// inside the receiver, which most events never make, so the `traceparent` is parsed and
    /// a span id drawn only then (about 800 instructions an event otherwise).
    Deferred {
        traceparent: Option<Bytes>,
        tracestate: Option<Bytes>,
        /// Once worked out, the same for every publish of this delivery.
        own: OnceCell<TraceContext>,
    },
}

impl Current {
    /// A child of the context `headers` carry (a new trace when they carry none), worked out
    /// only if something asks for it.
    pub(crate) fn child_of(headers: &Headers) -> Self {
        Self::Deferred {
            traceparent: headers.get_shared(TRACEPARENT).cloned(),
            tracestate: headers.get_shared(TRACESTATE).cloned(),
            own: OnceCell::new(),
        }
    }

    /// Runs `future` with this as the task's current context.
    pub(crate) fn scope<F: Future>(self, future: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, future)
    }

    fn get(&self) -> TraceContext {
        match self {
            Self::Known(own) => own.clone(),
            Self::Deferred {
                traceparent,
                tracestate,
                own,
            } => own
                .get_or_init(|| {
                    TraceContext::from_values(traceparent.as_deref(), tracestate.as_deref())
                        .map_or_else(TraceContext::new_root, |parent| parent.child())
                })
                .clone(),
        }
    }
}

/// One span's place in a distributed trace, as W3C Trace Context carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
    state: Option<String>,
}

impl TraceContext {
    /// A new trace (sampled), with a new span id.
    pub fn new_root() -> Self {
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&nonzero_random().to_be_bytes());
        trace_id[8..].copy_from_slice(&nonzero_random().to_be_bytes());
        Self {
            trace_id,
            span_id: nonzero_random().to_be_bytes(),
            flags: 0x01,
            state: None,
        }
    }

    /// A context from known ids (what an OpenTelemetry span reports, say).
    pub fn from_ids(trace_id: [u8; 16], span_id: [u8; 8], sampled: bool) -> Self {
        Self {
            trace_id,
            span_id,
            flags: u8::from(sampled),
            state: None,
        }
    }

    /// The same ids with this `tracestate` value.
    pub fn with_state(mut self, state: &str) -> Self {
        self.state = Some(state.to_owned()).filter(|s| !s.trim().is_empty());
        self
    }

    /// A span of the same trace below this one.
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id,
            span_id: nonzero_random().to_be_bytes(),
            flags: self.flags,
            state: self.state.clone(),
        }
    }

    /// Parses a `traceparent` value (`00-<trace id>-<span id>-<flags>`) and an optional
    /// `tracestate`. Invalid values (wrong length, non-hex, all-zero ids, version `ff`) give
    /// `None`; later versions are read by their version-00 prefix, as the spec asks.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let value = traceparent.trim().as_bytes();
        // Version 00 is exactly 55 bytes; a later one may go on after a `-`.
        if !value.is_ascii() || value.len() < 55 || (value.len() > 55 && value[55] != b'-') {
            return None;
        }
        let version = hex_byte(&value[0..2])?;
        if version == 0xff || (version == 0 && value.len() != 55) {
            return None;
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let trace_id: [u8; 16] = hex_bytes(&value[3..35])?;
        let span_id: [u8; 8] = hex_bytes(&value[36..52])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            flags: hex_byte(&value[53..55])?,
            state: tracestate
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        })
    }

    /// The context a message carries in its headers, if a valid one.
    pub fn from_headers(headers: &Headers) -> Option<Self> {
        Self::from_values(
            headers.get_bytes(TRACEPARENT),
            headers.get_bytes(TRACESTATE),
        )
    }

    /// [`TraceContext::parse`] of header values as they were sent; values that are not text
    /// count as absent.
    fn from_values(traceparent: Option<&[u8]>, tracestate: Option<&[u8]>) -> Option<Self> {
        fn text(value: &[u8]) -> Option<&str> {
            std::str::from_utf8(value).ok()
        }
        Self::parse(text(traceparent?)?, tracestate.and_then(text))
    }

    /// Writes `traceparent` (and `tracestate` when there is one) into `headers`.
    pub fn write_headers(&self, headers: &mut Headers) {
        self.write_headers_to_all(std::iter::once(headers));
    }

    /// [`TraceContext::write_headers`] for every message of a batch: the value is written
    /// once and shared.
    pub(crate) fn write_headers_to_all<'a>(&self, all: impl IntoIterator<Item = &'a mut Headers>) {
        let mut traceparent = bytes::Bytes::copy_from_slice(&self.traceparent_ascii());
        // The last message takes the value itself: a batch of one (a single `send`) then never
        // clones it, and the first clone is what makes `Bytes` allocate its shared count.
        let mut all = all.into_iter().peekable();
        while let Some(headers) = all.next() {
            let value = match all.peek() {
                Some(_) => traceparent.clone(),
                None => std::mem::take(&mut traceparent),
            };
            headers.insert_static(TRACEPARENT, value);
            match &self.state {
                Some(state) => headers.insert_static(TRACESTATE, state.clone()),
                None => headers.remove(TRACESTATE),
            }
        }
    }

    /// The `traceparent` value.
    pub fn traceparent(&self) -> String {
        String::from_utf8_lossy(&self.traceparent_ascii()).into_owned()
    }

    /// `00-` 32 hex `-` 16 hex `-` 2 hex, written into a fixed buffer.
    fn traceparent_ascii(&self) -> [u8; 55] {
        let mut out = [b'-'; 55];
        out[..2].copy_from_slice(b"00");
        hex_into(&self.trace_id, &mut out[3..35]);
        hex_into(&self.span_id, &mut out[36..52]);
        hex_into(&[self.flags], &mut out[53..55]);
        out
    }

    /// The trace id, 32 lower-case hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The span id, 16 lower-case hex digits.
    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }

    /// The trace id.
    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    /// The span id.
    pub fn span_id(&self) -> [u8; 8] {
        self.span_id
    }

    /// Whether the trace is sampled.
    pub fn sampled(&self) -> bool {
        self.flags & 0x01 == 1
    }

    /// The `tracestate` value, if any.
    pub fn state(&self) -> Option<&str> {
        self.state.as_deref()
    }

    /// The context of the delivery being handled by this task, if any: publishing from a
    /// receiver continues it. A task the receiver spawns does not inherit it; pass it on with
    /// [`TraceContext::scope`].
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Current::get).ok()
    }

    /// Runs `future` with this as the current context.
    pub fn scope<F: Future>(self, future: F) -> impl Future<Output = F::Output> {
        // Not an `async fn`, which would hold the future twice over: it runs in every event's.
        Current::Known(self).scope(future)
    }
}

/// Lower-case hex digits of `bytes` into `out` (twice as long): a table look-up per nibble,
/// since the formatting machinery costs more than the rest of a publish.
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    hex_into(bytes, &mut out);
    // Hex digits are ASCII: no replacement ever happens, and the buffer is reused.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Two hex digits as a byte.
fn hex_byte(digits: &[u8]) -> Option<u8> {
    hex_bytes::<1>(digits).map(|[byte]| byte)
}

/// `N` bytes from `2 * N` hex digits.
fn hex_bytes<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    let mut out = [0; N];
    // Checked once at the end, not per digit: a delivery's `traceparent` is read for every
    // event consumed (with `u8::from_str_radix` per byte it cost about 1,400 instructions).
    let mut seen = 0;
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let (high, low) = (
            HEX_DIGITS[usize::from(pair[0])],
            HEX_DIGITS[usize::from(pair[1])],
        );
        seen |= high | low;
        *byte = high << 4 | low;
    }
    (seen < 16).then_some(out)
}

/// Each byte's value as a lower-case hex digit, 0xff where it is none: upper-case hex is
/// invalid in `traceparent`.
static HEX_DIGITS: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// A random, non-zero 64-bit number from a per-thread generator (SplitMix64) seeded once from
/// the standard library's random hasher keys: span ids need uniqueness, not secrecy, and a
/// system call per id would cost more than the span.
fn nonzero_random() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(std::thread::current().id()));
    }
    STATE.with(|state| loop {
        let next = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        if z != 0 {
            return z;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_gets_one_context_over_whatever_it_had() {
        let mut stale = Headers::new();
        stale.append("ce_id", "1");
        stale.append(TRACEPARENT, TraceContext::new_root().traceparent());
        stale.append(TRACESTATE, "old=1");
        let mut batch = [stale, Headers::new()];
        for context in [
            TraceContext::new_root(),
            TraceContext::new_root().with_state("vendor=7"),
        ] {
            context.write_headers_to_all(batch.iter_mut());
            for headers in &batch {
                assert_eq!(headers.get_all(TRACEPARENT).count(), 1);
                assert_eq!(
                    headers.get(TRACEPARENT),
                    Some(context.traceparent().as_str())
                );
                assert_eq!(headers.get(TRACESTATE), context.state());
                assert_eq!(TraceContext::from_headers(headers), Some(context.clone()));
            }
            assert_eq!(batch[0].get("ce_id"), Some("1"));
        }
    }

    #[test]
    fn parses_and_writes_the_w3c_example() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceContext::parse(value, Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(ctx.traceparent(), value);
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(ctx.sampled());
        let child = ctx.child();
        assert_eq!(child.trace_id(), ctx.trace_id());
        assert_ne!(child.span_id(), ctx.span_id());
        assert_eq!(child.state(), Some("congo=t61rcWkgMzE"));
        let mut headers = Headers::new();
        child.write_headers(&mut headers);
        assert_eq!(TraceContext::from_headers(&headers), Some(child));
    }

    #[test]
    fn refuses_invalid_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01",
            // A sign is no hex digit (`u8::from_str_radix` would take it).
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-+1",
        ] {
            assert_eq!(TraceContext::parse(bad, None), None, "{bad}");
        }
        // A later version is read by its version-00 fields.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes";
        assert!(TraceContext::parse(later, None).is_some());
    }

    /// Every byte value reads back from the hex it is written as.
    #[test]
    fn every_byte_reads_back() {
        for byte in 0..=255u8 {
            let (mut trace, mut span) = ([0xab; 16], [0xcd; 8]);
            (trace[0], span[7]) = (byte, byte);
            let ids = TraceContext::from_ids(trace, span, byte % 2 == 0);
            let read = TraceContext::parse(&ids.traceparent(), None);
            assert_eq!(read, Some(ids), "{byte:#04x}");
        }
    }

    #[test]
    fn roots_differ() {
        let a = TraceContext::new_root();
        let b = TraceContext::new_root();
        assert_ne!(a.trace_id(), b.trace_id());
        assert!(a.sampled());
    }

    /// A delivery's context is worked out when first asked for: a child of what its headers
    /// carry, the same for every publish of the delivery, and a new trace when they carry
    /// nothing valid.
    #[tokio::test]
    async fn a_deferred_context_is_a_child_of_the_headers_and_stays_put() {
        let parent = TraceContext::new_root().with_state("vendor=7");
        let mut headers = Headers::new();
        headers.append("ce_id", "1");
        parent.write_headers(&mut headers);
        let (first, second) = Current::child_of(&headers)
            .scope(async { (TraceContext::current(), TraceContext::current()) })
            .await;
        let first = first.expect("a current context");
        assert_eq!(first.trace_id(), parent.trace_id());
        assert_ne!(first.span_id(), parent.span_id());
        assert_eq!(first.state(), Some("vendor=7"));
        assert!(first.sampled());
        assert_eq!(second, Some(first));

        let mut invalid = Headers::new();
        invalid.append(TRACEPARENT, "00-zz");
        invalid.append(TRACESTATE, "vendor=7");
        for headers in [Headers::new(), invalid] {
            let (first, second) = Current::child_of(&headers)
                .scope(async { (TraceContext::current(), TraceContext::current()) })
                .await;
            let first = first.expect("a new trace");
            assert_ne!(first.trace_id(), parent.trace_id());
            assert_eq!(
                first.state(),
                None,
                "a tracestate without its traceparent is dropped"
            );
            assert_eq!(second, Some(first));
        }
        assert_eq!(TraceContext::current(), None, "only inside the scope");
    }

    #[tokio::test]
    async fn the_scope_is_current_inside_only() {
        assert_eq!(TraceContext::current(), None);
        let ctx = TraceContext::new_root();
        let seen = ctx.clone().scope(async { TraceContext::current() }).await;
        assert_eq!(seen, Some(ctx));
    }
}
