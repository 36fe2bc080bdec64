//! Tamper-evident file logs: a SHA-256 hash chain in every line, keyed (HMAC-SHA256)
//! checkpoints, file headers that link rotated files, and the `verify-log` checker.
//!
//! # Line format
//! A chained line is the record's compact JSON object `R` with one last member appended:
//!
//! ```text
//! {…record…,"snapmon.chain":{"seq":N,"prev":"<64 hex>","hash":"<64 hex>"}}
//! ```
//!
//! `hash = SHA-256(prev (32 raw bytes) ‖ seq (8 bytes, big endian) ‖ R)` where `R` is the line
//! up to (not including) `,"snapmon.chain":` followed by `}`: the exact bytes the agent wrote,
//! so no JSON canonicalisation is involved. `prev` is the previous record's `hash` (all zeros
//! for the first record ever). The dotted key sits at the top level so it is always the last
//! member; Elasticsearch and most pipelines expand it to `snapmon.chain`.
//!
//! Records the chain writes itself (`event.kind: state`, dataset `snapmon.chain`):
//! - `log_header`: first line of every file (and after a reopen); its `prev` links to the last
//!   hash of the previous file, so rotated files splice into one chain.
//! - `chain_checkpoint`: every `checkpoint_every` records.
//! - `log_closed`: last line of a file closed by rotation, reopen or shutdown.
//! - `log_resumed`: the chain goes on after a break: first line of a run that continues a
//!   file an earlier run left (`reason: restart`, with `previous_run.clean` false when that
//!   run did not close the file: killed or crashed), or the first line stored after failed
//!   writes (`reason: write_error`, `lost_records`, `error`). A partial line a killed run
//!   left is ended with a newline first, so the chain resumes on a fresh line.
//!
//! `verify` tells tampering (a record altered, removed, reordered, a file swapped: exit 1)
//! from a log that is only incomplete (a cut tail, a killed run, records lost to a full disk:
//! exit 3, "truncated, not tampered").
//!
//! With a key, each of the three carries `snapmon.state.hmac` = HMAC-SHA256(key,
//! `snapmon-chain-v1 ACTION SEQ PREV`) with that record's own seq and prev, so rewriting the
//! whole chain without the key is detectable up to the last checkpoint.

use std::{
    collections::HashSet,
    fs,
    io::{self, Read, Seek, SeekFrom},
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::key::{hmac_sha256, load_key};

pub const CHAIN_KEY: &str = ",\"snapmon.chain\":{\"seq\":";
pub const ZERO: [u8; 32] = [0; 32];

fn hash_of(prev: &[u8; 32], seq: u64, r: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(r);
    h.finalize().into()
}

/// Lower-case hex, as `hex::encode` writes it, straight into the line.
fn push_hex(out: &mut Vec<u8>, b: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    // Grown once and filled in place: two hashes per line, a capacity check per digit showed.
    let start = out.len();
    out.resize(start + 2 * b.len(), 0);
    for (d, &x) in out[start..].chunks_exact_mut(2).zip(b) {
        d[0] = DIGITS[(x >> 4) as usize];
        d[1] = DIGITS[(x & 15) as usize];
    }
}

fn mac_hex(key: &[u8], action: &str, seq: u64, prev: &[u8; 32]) -> String {
    let msg = format!("snapmon-chain-v1 {action} {seq} {}", hex::encode(prev));
    hex::encode(hmac_sha256(key, msg.as_bytes()))
}

/// Writer side of the chain for one file sink.
pub struct Chain {
    /// Seq of the next record.
    pub seq: u64,
    pub prev: [u8; 32],
    key: Option<Vec<u8>>,
    every: u64,
    since_checkpoint: u64,
    /// The sink's format: its own records (header, checkpoint, footer) are written in it.
    format: super::config::Format,
}

impl Chain {
    pub fn new(key: Option<Vec<u8>>, every: u64, seq: u64, prev: [u8; 32]) -> Self {
        Chain {
            seq,
            prev,
            key,
            every: every.max(1),
            since_checkpoint: 0,
            format: super::config::Format::Json,
        }
    }

    /// Write the chain's own records in `format` (OCSF files get OCSF-shaped ones).
    pub fn with_format(mut self, format: super::config::Format) -> Self {
        self.format = format;
        self
    }

    /// Append the chain member to the record's JSON and advance. Returns the line with `\n`.
    pub fn seal(&mut self, r: &[u8]) -> Vec<u8> {
        let mut line = Vec::with_capacity(r.len() + 180);
        line.extend_from_slice(r);
        self.seal_owned(line)
    }

    /// [`Chain::seal`] on a record the caller owns: the member is appended in place, with no
    /// copy of the record and no formatting machinery (this runs once per record).
    pub fn seal_owned(&mut self, mut line: Vec<u8>) -> Vec<u8> {
        self.seal_in(&mut line, 0);
        line
    }

    /// [`Chain::seal`] on the record that is `line` from `start` on (the file sink renders
    /// straight into its write buffer): sealed in place, with its `\n`.
    pub fn seal_in(&mut self, line: &mut Vec<u8>, start: usize) {
        let hash = hash_of(&self.prev, self.seq, &line[start..]);
        if line.len() > start && line.last() == Some(&b'}') {
            line.pop();
        }
        line.reserve(180);
        line.extend_from_slice(CHAIN_KEY.as_bytes());
        let _ = serde_json::to_writer(&mut *line, &self.seq);
        line.extend_from_slice(b",\"prev\":\"");
        push_hex(line, &self.prev);
        line.extend_from_slice(b"\",\"hash\":\"");
        push_hex(line, &hash);
        line.extend_from_slice(b"\"}}\n");
        self.seq += 1;
        self.prev = hash;
        self.since_checkpoint += 1;
    }

    fn control(&mut self, action: &'static str, mut detail: Value, host: &str) -> Vec<u8> {
        detail["chain_version"] = json!(1);
        if let Some(k) = &self.key {
            detail["hmac"] = json!(mac_hex(k, action, self.seq, &self.prev));
        }
        let v = match self.format {
            super::config::Format::Ocsf => {
                super::ocsf::base_event(action, CHAIN_DATASET, "state", &detail, 1, host)
            }
            _ => super::json::control("state", action, CHAIN_DATASET, "state", &detail, host),
        };
        let r = serde_json::to_vec(&v).unwrap_or_default();
        let line = self.seal_owned(r);
        // Counted from this keyed record on.
        self.since_checkpoint = 0;
        line
    }

    pub fn header(&mut self, host: &str, file: &Path) -> Vec<u8> {
        let d = json!({
            "file": file.display().to_string(),
            "prev_file_hash": hex::encode(self.prev),
            "keyed": self.key.is_some(),
            "checkpoint_every": self.every,
        });
        self.control("log_header", d, host)
    }

    /// `log_resumed`: the chain goes on after a restart or after failed writes; `detail`
    /// says which (see the module doc).
    pub fn resumed(&mut self, host: &str, file: &Path, mut detail: Value) -> Vec<u8> {
        detail["file"] = json!(file.display().to_string());
        detail["keyed"] = json!(self.key.is_some());
        detail["checkpoint_every"] = json!(self.every);
        self.control("log_resumed", detail, host)
    }

    /// Go back to the state after the last line that reached the file (a failed write).
    pub fn rollback(&mut self, seq: u64, prev: [u8; 32]) {
        self.seq = seq;
        self.prev = prev;
    }

    pub fn checkpoint_due(&self) -> bool {
        self.since_checkpoint >= self.every
    }

    pub fn checkpoint(&mut self, host: &str) -> Vec<u8> {
        let d = json!({"covers_seq": self.seq.saturating_sub(1), "covers_hash": hex::encode(self.prev)});
        self.control("chain_checkpoint", d, host)
    }

    pub fn footer(&mut self, host: &str, reason: &str) -> Vec<u8> {
        let d = json!({"reason": reason, "covers_seq": self.seq.saturating_sub(1), "covers_hash": hex::encode(self.prev)});
        self.control("log_closed", d, host)
    }
}

/// `event.dataset` (ECS) / `unmapped.dataset` (OCSF) of the chain's own records.
pub const CHAIN_DATASET: &str = "snapmon.chain";

/// A parsed chained line.
#[derive(Debug, Clone)]
pub struct Link {
    pub seq: u64,
    pub prev: [u8; 32],
    pub hash: [u8; 32],
    /// The record bytes the hash covers.
    pub record: Vec<u8>,
}

fn hex32(s: &[u8]) -> Option<[u8; 32]> {
    let v = hex::decode(s).ok()?;
    v.try_into().ok()
}

/// Split a line (without `\n`) into record and chain member.
pub fn parse_line(line: &[u8]) -> Option<Link> {
    let key = CHAIN_KEY.as_bytes();
    // The member is last: find its start from the right. Inside JSON strings quotes are
    // escaped, so the raw key bytes can only be the structural member.
    let at = line.windows(key.len()).rposition(|w| w == key)?;
    let rest = &line[at + key.len()..];
    let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    let seq: u64 = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let rest = rest[digits..].strip_prefix(b",\"prev\":\"")?;
    let prev = hex32(rest.get(..64)?)?;
    let rest = rest[64..].strip_prefix(b"\",\"hash\":\"")?;
    let hash = hex32(rest.get(..64)?)?;
    if &rest[64..] != b"\"}}" {
        return None;
    }
    let mut record = line[..at].to_vec();
    record.push(b'}');
    Some(Link {
        seq,
        prev,
        hash,
        record,
    })
}

/// Does the file of length `len` end with a newline?
pub fn ends_with_newline(f: &fs::File, len: u64) -> io::Result<bool> {
    if len == 0 {
        return Ok(true);
    }
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, len - 1)?;
    Ok(b[0] == b'\n')
}

/// Where an earlier run left a chained file.
#[derive(Debug, Clone)]
pub struct Resume {
    /// Its last whole chained line.
    pub link: Link,
    /// That line is the `log_closed` of a shutdown: the run ended cleanly.
    pub clean: bool,
    pub last_action: String,
    /// `@timestamp` of that line: the last sign of life of a run that was killed.
    pub last_at: Option<String>,
    /// Bytes of an incomplete last line after it (a write cut short by a kill).
    pub partial_bytes: usize,
    pub file: PathBuf,
}

impl Resume {
    /// `previous_run` of the `log_resumed` record and of the `started` record.
    pub fn describe(&self) -> Value {
        json!({
            "clean": self.clean,
            "file": self.file.display().to_string(),
            "last_seq": self.link.seq,
            "last_action": self.last_action,
            "last_record_at": self.last_at,
            "partial_line_bytes": self.partial_bytes,
        })
    }

    /// The `log_resumed` detail for a restart.
    pub fn detail(&self) -> Value {
        json!({"reason": "restart", "previous_run": self.describe()})
    }
}

/// The last whole chained line of a file and how the run that wrote it ended, to continue
/// its chain after a restart. Only the last 256 KiB are read.
pub fn resume_point(path: &Path) -> io::Result<Option<Resume>> {
    let mut f = fs::File::open(path)?;
    let len = f.metadata()?.len();
    let start = len.saturating_sub(256 * 1024);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    // A last line without its newline: whole if it parses and its hash holds (only the
    // newline was lost), partial otherwise.
    let (body, mut partial_bytes) = match buf.iter().rposition(|&b| b == b'\n') {
        Some(i) if i + 1 == buf.len() => (&buf[..i], 0),
        Some(i) => (&buf[..=i], buf.len() - i - 1),
        None => (&buf[..0], buf.len()),
    };
    let tail = &buf[buf.len() - partial_bytes..];
    let whole_tail = partial_bytes > 0
        && parse_line(tail).is_some_and(|l| hash_of(&l.prev, l.seq, &l.record) == l.hash);
    let mut lines: Vec<&[u8]> = body
        .strip_suffix(b"\n")
        .unwrap_or(body)
        .split(|&b| b == b'\n')
        .collect();
    if whole_tail {
        lines.push(tail);
        partial_bytes = 0;
    }
    let Some(link) = lines.iter().rev().find_map(|l| parse_line(l)) else {
        return Ok(None);
    };
    let v: Value = serde_json::from_slice(&link.record).unwrap_or(Value::Null);
    let last_action = v["event"]["action"].as_str().unwrap_or("").to_string();
    let clean = v["event"]["dataset"] == "snapmon.chain"
        && last_action == "log_closed"
        && v["snapmon"]["state"]["reason"] == "shutdown";
    Ok(Some(Resume {
        last_at: v["@timestamp"].as_str().map(String::from),
        link,
        clean,
        last_action,
        partial_bytes,
        file: path.to_path_buf(),
    }))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tamper {
    Removed,
    Altered,
    Reordered,
    Truncated,
    Spliced,
    Unkeyed,
    /// Records the agent lost to failed writes, as its `log_resumed` line says.
    Lost,
}

impl Tamper {
    /// Someone changed the log (exit 1); the others only say it is incomplete (exit 3).
    pub fn tampering(&self) -> bool {
        !matches!(self, Tamper::Truncated | Tamper::Lost)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Tamper::Removed => "removed",
            Tamper::Altered => "altered",
            Tamper::Reordered => "reordered",
            Tamper::Truncated => "truncated",
            Tamper::Spliced => "spliced",
            Tamper::Unkeyed => "checkpoint",
            Tamper::Lost => "lost",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub file: PathBuf,
    pub line: usize,
    pub seq: Option<u64>,
    pub kind: Tamper,
    pub msg: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:", self.file.display(), self.line)?;
        if let Some(s) = self.seq {
            write!(f, " seq {s}:")?;
        }
        write!(f, " {}: {}", self.kind.as_str(), self.msg)
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub records: u64,
    pub checkpoints: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Files in chain order.
    pub files: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct Unreadable {
    pub path: String,
    pub source: io::Error,
}

struct Parsed {
    path: PathBuf,
    lines: Vec<Vec<u8>>,
    complete: bool,
    first_seq: u64,
}

/// Check one chain spread over `paths` (any order: files are ordered by their first seq).
/// `live`: the newest file may still be open, so it need not end with `log_closed`.
pub fn verify(paths: &[PathBuf], key: Option<&[u8]>, live: bool) -> Result<Report, Unreadable> {
    let mut files = Vec::new();
    for p in paths {
        let data = fs::read(p).map_err(|source| Unreadable {
            path: p.display().to_string(),
            source,
        })?;
        let complete = data.is_empty() || data.ends_with(b"\n");
        let mut lines: Vec<Vec<u8>> = data.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
        if lines.last().is_some_and(Vec::is_empty) {
            lines.pop();
        }
        let first_seq = lines
            .first()
            .and_then(|l| parse_line(l))
            .map(|l| l.seq)
            .unwrap_or(u64::MAX);
        files.push(Parsed {
            path: p.clone(),
            lines,
            complete,
            first_seq,
        });
    }
    files.sort_by_key(|f| f.first_seq);
    let mut rep = Report {
        files: files.iter().map(|f| f.path.clone()).collect(),
        ..Default::default()
    };
    // Every seq present, to tell a removal from a reordering.
    let all: HashSet<u64> = files
        .iter()
        .flat_map(|f| f.lines.iter().filter_map(|l| parse_line(l).map(|k| k.seq)))
        .collect();
    let mut expect: Option<(u64, [u8; 32])> = None;
    let mut checkpoint_every: Option<u64> = None;
    let mut since_mac = 0u64;
    let nfiles = files.len();
    for (fi, f) in files.iter().enumerate() {
        let mut push = |line: usize, seq: Option<u64>, kind: Tamper, msg: String| {
            rep.findings.push(Finding {
                file: f.path.clone(),
                line,
                seq,
                kind,
                msg,
            })
        };
        let mut last_action = String::new();
        if f.lines.is_empty() {
            push(0, None, Tamper::Truncated, "file is empty".into());
            continue;
        }
        for (li, raw) in f.lines.iter().enumerate() {
            let ln = li + 1;
            let is_last_line = li + 1 == f.lines.len();
            if is_last_line && !f.complete {
                push(
                    ln,
                    None,
                    Tamper::Truncated,
                    "last line is incomplete (file cut mid-record: a crash, or a cut tail)".into(),
                );
                break;
            }
            let Some(link) = parse_line(raw) else {
                // A killed run's partial last line, ended by the next run, which resumes the
                // chain where the line before this one left it.
                let resumes = f
                    .lines
                    .get(li + 1)
                    .and_then(|n| parse_line(n))
                    .is_some_and(|n| {
                        is_control(&n, "log_resumed")
                            && expect.is_none_or(|(es, eh)| n.seq == es && n.prev == eh)
                    });
                if resumes {
                    push(
                        ln,
                        None,
                        Tamper::Truncated,
                        "partial record of a run that was killed; the next line resumes the chain (truncated, not tampered)".into(),
                    );
                } else {
                    push(
                        ln,
                        None,
                        Tamper::Altered,
                        "line has no valid snapmon.chain member".into(),
                    );
                }
                continue;
            };
            let seq = Some(link.seq);
            if hash_of(&link.prev, link.seq, &link.record) != link.hash {
                push(
                    ln,
                    seq,
                    Tamper::Altered,
                    "record content does not match its hash".into(),
                );
            }
            let v: Value = serde_json::from_slice(&link.record).unwrap_or(Value::Null);
            let (dataset, action, state) = super::json::control_view(&v);
            let action = action.to_string();
            let control = dataset == CHAIN_DATASET;
            if li == 0 && !(control && (action == "log_header" || action == "log_resumed")) {
                push(
                    ln,
                    seq,
                    Tamper::Removed,
                    "file does not start with its log_header record".into(),
                );
            }
            match expect {
                None => {
                    rep.first_seq = Some(link.seq);
                    if link.prev != ZERO && link.seq == 0 {
                        push(
                            ln,
                            seq,
                            Tamper::Altered,
                            "chain starts at seq 0 with a non-zero prev".into(),
                        );
                    }
                }
                Some((es, eh)) => {
                    let boundary = li == 0;
                    if link.seq == es && link.prev == eh {
                        // Linked.
                    } else if boundary && link.seq == es {
                        push(ln, seq, Tamper::Spliced, format!("file header does not link to the last record of {} (a file was swapped in or the previous one altered)", files[fi - 1].path.display()));
                    } else if link.seq > es {
                        let (kind, what) = if (es..link.seq).any(|s| all.contains(&s)) {
                            (Tamper::Reordered, "out of order")
                        } else if boundary {
                            (Tamper::Spliced, "missing between files")
                        } else {
                            (Tamper::Removed, "missing")
                        };
                        push(
                            ln,
                            seq,
                            kind,
                            format!(
                                "expected seq {es}: {} record(s) {what} before this line",
                                link.seq - es
                            ),
                        );
                    } else if link.seq < es {
                        push(
                            ln,
                            seq,
                            Tamper::Reordered,
                            format!("seq {} appears after seq {}", link.seq, es - 1),
                        );
                    } else {
                        push(
                            ln,
                            seq,
                            Tamper::Altered,
                            "prev hash does not match the previous record (a record before this one was replaced)".into(),
                        );
                    }
                }
            }
            if control {
                if action == "log_header" || action == "log_resumed" {
                    checkpoint_every = state["checkpoint_every"].as_u64();
                }
                if action == "log_resumed"
                    && state["reason"] == "restart"
                    && state["previous_run"]["clean"] == false
                {
                    push(
                        ln,
                        seq,
                        Tamper::Truncated,
                        format!(
                            "the run before this line ended without closing the log (killed or crashed) after seq {} at {}: records it had not written yet are lost (truncated, not tampered)",
                            state["previous_run"]["last_seq"],
                            state["previous_run"]["last_record_at"].as_str().unwrap_or("?")
                        ),
                    );
                }
                if action == "log_resumed" && state["reason"] == "write_error" {
                    push(
                        ln,
                        seq,
                        Tamper::Lost,
                        format!(
                            "{} record(s) lost to failed writes ({}) from {} until this line (not tampered)",
                            state["lost_records"],
                            state["error"].as_str().unwrap_or("?"),
                            state["first_lost_at"].as_str().unwrap_or("?")
                        ),
                    );
                }
                if let Some(k) = key {
                    let mac = state["hmac"].as_str().unwrap_or("");
                    if mac != mac_hex(k, &action, link.seq, &link.prev) {
                        push(
                            ln,
                            seq,
                            Tamper::Unkeyed,
                            format!(
                                "{action} has a missing or wrong HMAC (forged, or another key)"
                            ),
                        );
                    }
                }
                if action == "chain_checkpoint" || action == "log_closed" {
                    rep.checkpoints += 1;
                }
                since_mac = 0;
            } else {
                since_mac += 1;
                if let (Some(_), Some(every)) = (key, checkpoint_every) {
                    if since_mac == every + 1 {
                        push(
                            ln,
                            seq,
                            Tamper::Removed,
                            format!("no checkpoint within {every} records (checkpoint removed)"),
                        );
                    }
                }
            }
            rep.records += 1;
            rep.last_seq = Some(link.seq);
            last_action = if control { action } else { String::new() };
            expect = Some((link.seq + 1, link.hash));
        }
        let newest = fi + 1 == nfiles;
        if last_action != "log_closed" && f.complete && !(newest && live) {
            push(
                f.lines.len(),
                rep.last_seq,
                Tamper::Truncated,
                "file does not end with log_closed: records after this line were cut (use --live for a file still being written)".into(),
            );
        }
    }
    Ok(rep)
}

fn is_control(l: &Link, action: &str) -> bool {
    let v: Value = serde_json::from_slice(&l.record).unwrap_or(Value::Null);
    let (dataset, a, _) = super::json::control_view(&v);
    dataset == CHAIN_DATASET && a == action
}

/// `snapmon verify-log`: print the verdict, return the exit status (0 intact, 1 tampered,
/// 2 unreadable, 3 truncated or incomplete but not tampered).
pub fn verify_cmd(files: &[PathBuf], key_file: Option<&Path>, live: bool) -> i32 {
    let key = match key_file.map(load_key) {
        Some(Ok(k)) => Some(k),
        Some(Err(e)) => {
            eprintln!("snapmon: {e}");
            return 2;
        }
        None => None,
    };
    match verify(files, key.as_deref(), live) {
        Err(e) => {
            eprintln!("snapmon: cannot read {e}");
            2
        }
        Ok(rep) if rep.findings.is_empty() => {
            println!(
                "intact: {} records, seq {}..{}, {} checkpoints{} in {} file(s)",
                rep.records,
                rep.first_seq.unwrap_or(0),
                rep.last_seq.unwrap_or(0),
                rep.checkpoints,
                if key.is_some() {
                    " (HMAC verified)"
                } else {
                    ""
                },
                rep.files.len()
            );
            0
        }
        Ok(rep) => {
            for f in &rep.findings {
                println!("{f}");
            }
            let tampered = rep.findings.iter().filter(|f| f.kind.tampering()).count();
            if tampered > 0 {
                println!(
                    "TAMPERED: {tampered} finding(s) of tampering ({} in all) in {} records",
                    rep.findings.len(),
                    rep.records
                );
                1
            } else {
                println!(
                    "truncated, not tampered: {} finding(s) in {} records, seq {}..{}; every record present is intact",
                    rep.findings.len(),
                    rep.records,
                    rep.first_seq.unwrap_or(0),
                    rep.last_seq.unwrap_or(0)
                );
                3
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Record;

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Case 6: a key longer than the block is hashed first.
        let mac = hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        assert_eq!(
            hex::encode(mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn seal_and_parse_round_trip() {
        let mut c = Chain::new(None, 10, 0, ZERO);
        let line = c.seal(br#"{"a":"x,\"snapmon.chain\":{\"seq\":1"}"#);
        let s = std::str::from_utf8(&line).unwrap();
        assert!(s.ends_with("\"}}\n"), "{s}");
        let v: Value = serde_json::from_str(s).unwrap();
        assert_eq!(v["snapmon.chain"]["seq"], 0);
        let l = parse_line(&line[..line.len() - 1]).unwrap();
        assert_eq!(l.record, br#"{"a":"x,\"snapmon.chain\":{\"seq\":1"}"#);
        assert_eq!(hash_of(&l.prev, 0, &l.record), l.hash);
    }

    use crate::sink::{
        config::SinkConfig, file::FileSink, fixtures, Format, SinkCounters, SinkWriter,
    };
    use std::sync::Arc;

    fn dir(tag: &str) -> crate::testutil::TmpDir {
        crate::testutil::TmpDir::new(&format!("chain-{tag}"))
    }

    /// A keyed log of `n` events with checkpoints every 4, rotated at `rotate` bytes.
    fn make_log(d: &Path, n: u64, rotate: Option<&str>) -> (PathBuf, PathBuf) {
        let key = d.join("key");
        fs::write(&key, "0123456789abcdef-secret\n").unwrap();
        let p = d.join("s.jsonl");
        let mut spec = format!(
            "file:{},key_file={},checkpoint_every=4,keep=9",
            p.display(),
            key.display()
        );
        if let Some(r) = rotate {
            spec.push_str(&format!(",rotate_size={r}"));
        }
        let c = SinkConfig::parse_spec(&spec).unwrap();
        let ctr = Arc::new(SinkCounters::new(c.name(), "file", Format::Json.as_str()));
        let mut s = FileSink::open(&c, Format::Json, "h".into(), ctr).unwrap();
        for i in 0..n {
            s.write(&Record::Event(fixtures::event(i)));
        }
        s.close();
        (p, key)
    }

    fn lines(p: &Path) -> Vec<String> {
        fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }
    fn put(p: &Path, l: &[String]) {
        fs::write(p, l.join("\n") + "\n").unwrap();
    }
    fn check(files: &[PathBuf], key: &Path, live: bool) -> Vec<Finding> {
        let k = load_key(key).unwrap();
        verify(files, Some(&k), live).unwrap().findings
    }
    fn only(f: &[Finding], kind: Tamper, line: usize) {
        assert!(!f.is_empty(), "nothing found");
        assert_eq!(f[0].kind, kind, "{f:#?}");
        assert_eq!(f[0].line, line, "{f:#?}");
    }

    #[test]
    fn intact_log_verifies_with_and_without_key() {
        let d = dir("ok");
        let (p, key) = make_log(&d, 10, None);
        assert!(check(std::slice::from_ref(&p), &key, false).is_empty());
        let rep = verify(std::slice::from_ref(&p), None, false).unwrap();
        assert!(rep.findings.is_empty());
        // header + 10 events + 2 checkpoints + footer
        assert_eq!(rep.records, 14);
        assert_eq!(rep.checkpoints, 3);
        assert_eq!(verify_cmd(std::slice::from_ref(&p), Some(&key), false), 0);
        assert_eq!(verify_cmd(&[d.join("missing")], None, false), 2);
        // Another key: every keyed record is flagged.
        let other = d.join("other");
        fs::write(&other, "another-key-of-16-bytes").unwrap();
        let f = check(&[p], &other, false);
        assert_eq!(f[0].kind, Tamper::Unkeyed);
        assert_eq!(f[0].line, 1);
    }

    #[test]
    fn removal_is_caught_with_line_and_seq() {
        let d = dir("rm");
        let (p, key) = make_log(&d, 10, None);
        let mut l = lines(&p);
        l.remove(3); // seq 3 (header is seq 0)
        put(&p, &l);
        let f = check(std::slice::from_ref(&p), &key, false);
        only(&f, Tamper::Removed, 4);
        assert_eq!(f[0].seq, Some(4));
        assert!(f[0].msg.contains("expected seq 3"), "{}", f[0]);
        assert_eq!(verify_cmd(&[p], Some(&key), false), 1);
    }

    #[test]
    fn alteration_is_caught() {
        let d = dir("alt");
        let (p, key) = make_log(&d, 10, None);
        let mut l = lines(&p);
        l[2] = l[2].replace("\"pid\":4242", "\"pid\":4243");
        assert!(l[2].contains("\"pid\":4243"));
        put(&p, &l);
        only(
            &check(std::slice::from_ref(&p), &key, false),
            Tamper::Altered,
            3,
        );
        // Re-hashing that record only moves the break to the next line.
        let link = parse_line(l[2].as_bytes()).unwrap();
        let mut c = Chain::new(None, 1000, link.seq, link.prev);
        let resealed = c.seal(&link.record);
        l[2] = String::from_utf8(resealed).unwrap().trim_end().to_string();
        put(&p, &l);
        only(&check(&[p], &key, false), Tamper::Altered, 4);
    }

    #[test]
    fn reordering_is_caught() {
        let d = dir("ord");
        let (p, key) = make_log(&d, 10, None);
        let mut l = lines(&p);
        l.swap(2, 3);
        put(&p, &l);
        let f = check(&[p], &key, false);
        only(&f, Tamper::Reordered, 3);
        assert!(f.iter().all(|x| x.kind == Tamper::Reordered), "{f:#?}");
    }

    #[test]
    fn truncation_is_caught_mid_line_and_at_line_ends() {
        let d = dir("trunc");
        let (p, key) = make_log(&d, 10, None);
        let data = fs::read(&p).unwrap();
        fs::write(&p, &data[..data.len() - 40]).unwrap();
        let f = check(std::slice::from_ref(&p), &key, false);
        only(&f, Tamper::Truncated, 14);
        let mut l = lines(&p);
        l.truncate(10);
        put(&p, &l);
        let f = check(std::slice::from_ref(&p), &key, false);
        only(&f, Tamper::Truncated, 10);
        // --live accepts a file that is still being written.
        assert!(check(&[p], &key, true).is_empty());
    }

    #[test]
    fn keyless_rewrite_and_checkpoint_removal_are_caught() {
        let d = dir("forge");
        let (p, key) = make_log(&d, 10, None);
        // Drop a record and recompute the whole chain without the key.
        let mut l = lines(&p);
        l.remove(3);
        let mut c = Chain::new(None, 1000, 0, ZERO);
        let l: Vec<String> = l
            .iter()
            .map(|x| {
                let k = parse_line(x.as_bytes()).unwrap();
                String::from_utf8(c.seal(&k.record))
                    .unwrap()
                    .trim_end()
                    .to_string()
            })
            .collect();
        put(&p, &l);
        assert!(verify(std::slice::from_ref(&p), None, false)
            .unwrap()
            .findings
            .is_empty());
        let f = check(std::slice::from_ref(&p), &key, false);
        assert!(f.iter().any(|x| x.kind == Tamper::Unkeyed), "{f:#?}");
        // Without checkpoints at all: the gap itself is a finding.
        let (p, key) = make_log(&d, 12, None);
        let l: Vec<String> = lines(&p)
            .into_iter()
            .filter(|x| !x.contains("chain_checkpoint"))
            .collect();
        let mut c = Chain::new(None, 1000, 0, ZERO);
        let l: Vec<String> = l
            .iter()
            .map(|x| {
                let k = parse_line(x.as_bytes()).unwrap();
                String::from_utf8(c.seal(&k.record))
                    .unwrap()
                    .trim_end()
                    .to_string()
            })
            .collect();
        put(&p, &l);
        let f = check(&[p], &key, true);
        assert!(
            f.iter()
                .any(|x| x.kind == Tamper::Removed && x.msg.contains("no checkpoint")),
            "{f:#?}"
        );
    }

    /// A run killed mid-line, then restarted on the same file: the chain resumes on a fresh
    /// line, and verify says truncated (3), never tampered; an edit is still tampering (1).
    #[test]
    fn a_killed_run_is_truncation_and_an_edit_after_it_is_tampering() {
        let d = dir("crash");
        let (p, key) = make_log(&d, 10, None);
        // The kill: the footer and half of the last record never reached the file.
        let mut l = lines(&p);
        l.pop();
        let last = l.pop().unwrap();
        let cut = l.join("\n") + "\n" + &last[..last.len() / 2];
        fs::write(&p, &cut).unwrap();
        let c = SinkConfig::parse_spec(&format!(
            "file:{},key_file={},checkpoint_every=4",
            p.display(),
            key.display()
        ))
        .unwrap();
        let ctr = Arc::new(SinkCounters::new(c.name(), "file", Format::Json.as_str()));
        let mut s = FileSink::open(&c, Format::Json, "h".into(), ctr).unwrap();
        let prev = s.previous_run().unwrap();
        assert_eq!(prev["clean"], false, "{prev}");
        assert!(prev["partial_line_bytes"].as_u64().unwrap() > 0, "{prev}");
        s.write(&Record::Event(fixtures::event(99)));
        s.close();
        let after = lines(&p);
        // The partial line stays as it was, on a line of its own, and the chain goes on.
        let at = after
            .iter()
            .position(|x| x.contains("log_resumed"))
            .unwrap();
        assert_eq!(after[at - 1], last[..last.len() / 2]);
        assert_eq!(
            parse_line(after[at].as_bytes()).unwrap().seq,
            parse_line(after[at - 2].as_bytes()).unwrap().seq + 1
        );
        let rep = verify(
            std::slice::from_ref(&p),
            Some(&load_key(&key).unwrap()),
            false,
        )
        .unwrap();
        assert!(!rep.findings.is_empty());
        assert!(
            rep.findings.iter().all(|f| !f.kind.tampering()),
            "{:#?}",
            rep.findings
        );
        assert_eq!(verify_cmd(std::slice::from_ref(&p), Some(&key), false), 3);
        // An edit after the crash is tampering.
        let mut l = lines(&p);
        l[2] = l[2].replace("\"pid\":4242", "\"pid\":4243");
        put(&p, &l);
        assert_eq!(verify_cmd(std::slice::from_ref(&p), Some(&key), false), 1);
        // A clean stop and restart is intact and says so.
        let clean = dir("clean");
        let (p, key) = make_log(&clean, 3, None);
        let c = SinkConfig::parse_spec(&format!("file:{},key_file={}", p.display(), key.display()))
            .unwrap();
        let ctr = Arc::new(SinkCounters::new(c.name(), "file", Format::Json.as_str()));
        let mut s = FileSink::open(&c, Format::Json, "h".into(), ctr).unwrap();
        assert_eq!(s.previous_run().unwrap()["clean"], true);
        s.close();
        assert_eq!(verify_cmd(&[p], Some(&key), false), 0);
    }

    #[test]
    fn a_start_on_a_full_disk_is_an_error() {
        let c = SinkConfig::parse_spec("file:/dev/full,chain=true").unwrap();
        let ctr = Arc::new(SinkCounters::new(c.name(), "file", Format::Json.as_str()));
        let e = FileSink::open(&c, Format::Json, "h".into(), ctr)
            .err()
            .expect("opened");
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    }

    #[test]
    fn rotated_file_splice_and_missing_file_are_caught() {
        let d = dir("splice");
        let (p, key) = make_log(&d, 40, Some("3K"));
        let n1 = d.join("s.jsonl.1");
        let n2 = d.join("s.jsonl.2");
        assert!(n2.exists(), "expected at least two rotations");
        let all = [p.clone(), n1.clone(), n2.clone()];
        assert!(check(&all, &key, false).is_empty());
        // A rotated file left out: the next header does not link.
        let f = check(&[p.clone(), n2.clone()], &key, false);
        assert_eq!(f[0].kind, Tamper::Spliced, "{f:#?}");
        assert_eq!(f[0].line, 1);
        // A file from another chain (same seqs) swapped in for .1.
        let other = dir("splice-other");
        make_log(&other, 40, Some("3K"));
        fs::copy(other.join("s.jsonl.1"), &n1).unwrap();
        let f = check(&all, &key, false);
        assert!(f.iter().any(|x| x.kind == Tamper::Spliced), "{f:#?}");
        // The rotated file cut short (whole lines): caught at its end.
        let (p, key) = make_log(&d, 40, Some("3K"));
        let mut l = lines(&n1);
        l.truncate(l.len() - 2);
        put(&n1, &l);
        let f = check(&[p, n1, n2], &key, false);
        assert!(f.iter().any(|x| x.kind == Tamper::Truncated), "{f:#?}");
    }
}
