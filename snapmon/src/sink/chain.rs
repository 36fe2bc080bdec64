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
//!
//! With a key, each of the three carries `snapmon.state.hmac` = HMAC-SHA256(key,
//! `snapmon-chain-v1 ACTION SEQ PREV`) with that record's own seq and prev, so rewriting the
//! whole chain without the key is detectable up to the last checkpoint.

use std::{
    collections::HashSet,
    fs,
    io::{self, Read, Seek, SeekFrom},
    path::{Path, PathBuf},
};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::record::{Record, StateRecord};

pub const CHAIN_KEY: &str = ",\"snapmon.chain\":{\"seq\":";
pub const ZERO: [u8; 32] = [0; 32];

/// HMAC-SHA256 (RFC 2104) over sha2.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

#[derive(Debug, thiserror::Error)]
#[error("key file {path}: {msg}")]
pub struct KeyError {
    path: String,
    msg: String,
}

/// Key bytes from a file, trailing whitespace trimmed (so `echo secret > key` works).
pub fn load_key(p: &Path) -> Result<Vec<u8>, KeyError> {
    let err = |msg: String| KeyError {
        path: p.display().to_string(),
        msg,
    };
    let mut b = fs::read(p).map_err(|e| err(e.to_string()))?;
    while b.last().is_some_and(|c| c.is_ascii_whitespace()) {
        b.pop();
    }
    if b.len() < 16 {
        return Err(err("key is shorter than 16 bytes".into()));
    }
    Ok(b)
}

fn hash_of(prev: &[u8; 32], seq: u64, r: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(r);
    h.finalize().into()
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
}

impl Chain {
    pub fn new(key: Option<Vec<u8>>, every: u64, seq: u64, prev: [u8; 32]) -> Self {
        Chain {
            seq,
            prev,
            key,
            every: every.max(1),
            since_checkpoint: 0,
        }
    }

    /// Append the chain member to the record's JSON and advance. Returns the line with `\n`.
    pub fn seal(&mut self, r: &[u8]) -> Vec<u8> {
        let hash = hash_of(&self.prev, self.seq, r);
        let body = r.strip_suffix(b"}").unwrap_or(r);
        let mut line = Vec::with_capacity(r.len() + 180);
        line.extend_from_slice(body);
        line.extend_from_slice(CHAIN_KEY.as_bytes());
        line.extend_from_slice(
            format!(
                "{},\"prev\":\"{}\",\"hash\":\"{}\"}}}}\n",
                self.seq,
                hex::encode(self.prev),
                hex::encode(hash)
            )
            .as_bytes(),
        );
        self.seq += 1;
        self.prev = hash;
        self.since_checkpoint += 1;
        line
    }

    fn control(&mut self, action: &'static str, mut detail: Value, host: &str) -> Vec<u8> {
        detail["chain_version"] = json!(1);
        if let Some(k) = &self.key {
            detail["hmac"] = json!(mac_hex(k, action, self.seq, &self.prev));
        }
        let mut v = super::json::to_value(&Record::State(StateRecord { action, detail }), host);
        v["event"]["dataset"] = json!("snapmon.chain");
        let r = serde_json::to_vec(&v).unwrap_or_default();
        self.since_checkpoint = 0;
        self.seal(&r)
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

/// The last complete chained line of a file, to continue its chain after a restart.
pub fn tail_link(path: &Path) -> io::Result<Option<Link>> {
    let mut f = fs::File::open(path)?;
    let len = f.metadata()?.len();
    let start = len.saturating_sub(256 * 1024);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    if !buf.ends_with(b"\n") {
        return Ok(None);
    }
    let body = &buf[..buf.len() - 1];
    let last = body.rsplit(|&b| b == b'\n').next().unwrap_or(body);
    Ok(parse_line(last))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tamper {
    Removed,
    Altered,
    Reordered,
    Truncated,
    Spliced,
    Unkeyed,
}

impl Tamper {
    pub fn as_str(&self) -> &'static str {
        match self {
            Tamper::Removed => "removed",
            Tamper::Altered => "altered",
            Tamper::Reordered => "reordered",
            Tamper::Truncated => "truncated",
            Tamper::Spliced => "spliced",
            Tamper::Unkeyed => "checkpoint",
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
                    "last line is incomplete (file cut mid-record)".into(),
                );
                break;
            }
            let Some(link) = parse_line(raw) else {
                push(
                    ln,
                    None,
                    Tamper::Altered,
                    "line has no valid snapmon.chain member".into(),
                );
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
            let action = v["event"]["action"].as_str().unwrap_or("").to_string();
            let control = v["event"]["dataset"] == "snapmon.chain";
            if li == 0 && !(control && action == "log_header") {
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
                if action == "log_header" {
                    checkpoint_every = v["snapmon"]["state"]["checkpoint_every"].as_u64();
                }
                if let Some(k) = key {
                    let mac = v["snapmon"]["state"]["hmac"].as_str().unwrap_or("");
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
