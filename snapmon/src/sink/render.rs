//! One record in a sink's format (ECS JSON, OCSF, tail), and the record id every sink and
//! every re-send of a record shares.

use std::sync::atomic::AtomicU64;

use serde_json::json;

use super::{config::Format, counters::RELAXED, json, ocsf, tail};
use crate::record::Record;

/// One record in a sink's format, without a trailing newline.
pub fn render(format: Format, r: &Record, host: &str, colour: bool) -> Vec<u8> {
    render_id(format, r, None, host, colour)
}

/// [`render`] with the record's id (ECS `event.id`, OCSF `metadata.uid`; tail shows none).
pub fn render_id(
    format: Format,
    r: &Record,
    id: Option<RecordId>,
    host: &str,
    colour: bool,
) -> Vec<u8> {
    match format {
        Format::Json => {
            let mut out = Vec::with_capacity(2048);
            json::write_record_id(&mut out, r, host, id.map(RecordId::text).as_deref());
            out
        }
        Format::Ocsf => {
            let mut v = ocsf::to_value(r, host);
            if let Some(id) = id {
                v["metadata"]["uid"] = json!(id.to_string());
            }
            serde_json::to_vec(&v).unwrap_or_default()
        }
        Format::Tail => tail::render(r, colour).unwrap_or_default().into_bytes(),
    }
}

/// A record's id: the same in every sink and in every re-send of the record, so a consumer
/// (or JetStream, through `Nats-Msg-Id`) can drop duplicates. `RUN-N`: RUN is 16 random hex
/// digits drawn when the agent starts, N counts the records it handed to its sinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordId(pub u64);

impl RecordId {
    /// The next id of this run.
    pub fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        RecordId(NEXT.fetch_add(1, RELAXED))
    }
}

impl RecordId {
    /// As `to_string`, without the formatting machinery: every record's JSON carries one.
    pub fn text(self) -> String {
        let mut s = String::with_capacity(run_id().len() + 21);
        self.push_text(&mut s);
        s
    }

    /// [`RecordId::text`] appended to `s` (a sink reuses one buffer for every record).
    pub fn push_text(self, s: &mut String) {
        let run = run_id();
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut n = self.0;
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        s.push_str(run);
        s.push('-');
        s.extend(digits[at..].iter().map(|&d| char::from(d)));
    }
}

impl std::fmt::Display for RecordId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", run_id(), self.0)
    }
}

/// This run's random part of every record id.
pub fn run_id() -> &'static str {
    static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    RUN.get_or_init(|| {
        let mut b = [0u8; 8];
        // SAFETY: fills the local buffer of the stated length.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        if n != b.len() as isize {
            // No entropy source: time and pid still differ between runs.
            let t = crate::clock::now_unix_ns() as u64 ^ ((std::process::id() as u64) << 40);
            b = t.to_be_bytes();
        }
        hex::encode(b)
    })
}
