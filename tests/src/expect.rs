//! Typed expectations (pulsar's `expect_event!`, tetragon's checkers): a test says which
//! record it waits for, and a miss fails with what the agent wrote instead — the alerts of
//! that rule for other processes or files, and the agent's own records of that file or
//! process — so a lost event reads differently from a misjudged one.

use std::{
    fmt::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::Value;
pub use snapmon_schema::record::Severity;
use snapmon_schema::record::{Kind, Record};

use crate::Agent;

/// How a record may name a path.
#[derive(Debug, Clone)]
enum Naming {
    /// `file.path` or the destination of a rename or link.
    About(String),
    /// As `About`, or anywhere in the message (alerts about a set of files name one there).
    Mentions(String),
}

/// One record a test waits for. Build it with [`Expect::alert`] or [`Expect::event`], narrow
/// it, then hand it to [`Agent::expect`].
#[derive(Debug, Clone)]
#[must_use = "an expectation does nothing until passed to Agent::expect"]
pub struct Expect {
    kind: Kind,
    /// Any of these rules (empty: any rule, or none).
    rules: Vec<String>,
    action: Option<String>,
    pid: Option<u32>,
    path: Option<Naming>,
    severity: Option<Severity>,
    message: Vec<String>,
    /// `snapmon.detail.<key>` is this string.
    detail: Vec<(String, String)>,
    /// `snapmon.write.offset`.
    offset: Option<u64>,
    /// A `snapmon.classification.changes` entry: this field (to this value).
    change: Option<(String, Option<String>)>,
    /// `snapmon.write` is there.
    write: bool,
    /// `snapmon.classification.format`.
    format: Option<String>,
    since: Option<u64>,
    /// After a miss, how much longer to wait to tell "late" from "never".
    grace: Duration,
}

impl Expect {
    fn new(kind: Kind) -> Expect {
        Expect {
            kind,
            rules: vec![],
            action: None,
            pid: None,
            path: None,
            severity: None,
            message: vec![],
            detail: vec![],
            offset: None,
            change: None,
            write: false,
            format: None,
            since: None,
            grace: Duration::from_secs(5),
        }
    }

    /// An alert of `rule` (`SM-Q002` …).
    pub fn alert(rule: &str) -> Expect {
        Expect {
            rules: vec![rule.into()],
            ..Expect::new(Kind::Alert)
        }
    }

    /// An event record of `action` (`pwrite64`, `unlink`, `rename` …).
    pub fn event(action: &str) -> Expect {
        Expect {
            action: Some(action.into()),
            ..Expect::new(Kind::Event)
        }
    }

    /// An event record of any action (narrow it by path, offset or change).
    pub fn any_event() -> Expect {
        Expect::new(Kind::Event)
    }

    /// By this process.
    pub fn pid(mut self, pid: u32) -> Expect {
        self.pid = Some(pid);
        self
    }

    /// About `p`: its `file.path`, or the destination of its rename or link.
    pub fn path(mut self, p: impl AsRef<Path>) -> Expect {
        self.path = Some(Naming::About(p.as_ref().to_string_lossy().into_owned()));
        self
    }

    /// About `p` as [`Expect::path`], or naming it in the message.
    pub fn mentions(mut self, p: impl AsRef<Path>) -> Expect {
        self.path = Some(Naming::Mentions(p.as_ref().to_string_lossy().into_owned()));
        self
    }

    /// `snapmon.severity` at or above `s`.
    pub fn severity_at_least(mut self, s: Severity) -> Expect {
        self.severity = Some(s);
        self
    }

    /// The message contains `text` (may be given more than once).
    pub fn message_has(mut self, text: &str) -> Expect {
        self.message.push(text.into());
        self
    }

    /// `snapmon.detail.<key>` is `value` (`write_op`, `loop_watch` …; may be given more
    /// than once).
    pub fn detail(mut self, key: &str, value: &str) -> Expect {
        self.detail.push((key.into(), value.into()));
        self
    }

    /// An alert of `rule` will do as well (for a record whose rule depends on the backend).
    pub fn or_rule(mut self, rule: &str) -> Expect {
        self.rules.push(rule.into());
        self
    }

    /// A write (it has `snapmon.write`).
    pub fn write(mut self) -> Expect {
        self.write = true;
        self
    }

    /// Classified as `format` (`snapmon.classification.format`: `qcow2`, `libvirt` …).
    pub fn format(mut self, format: &str) -> Expect {
        self.format = Some(format.into());
        self
    }

    /// Its classification changes header `field`, to anything.
    pub fn changes(mut self, field: &str) -> Expect {
        self.change = Some((field.into(), None));
        self
    }

    /// A write at this offset (`snapmon.write.offset`).
    pub fn offset(mut self, offset: u64) -> Expect {
        self.offset = Some(offset);
        self
    }

    /// Its classification changes header `field` to `after` (as the record spells it).
    pub fn change(mut self, field: &str, after: &str) -> Expect {
        self.change = Some((field.into(), Some(after.into())));
        self
    }

    /// Written after `mark` ([`Agent::mark`]); without it every record counts.
    pub fn since(mut self, mark: u64) -> Expect {
        self.since = Some(mark);
        self
    }

    /// After a miss, wait this much longer to say whether the record came late (default 5 s;
    /// zero for a test that wants its failure at once).
    pub fn grace(mut self, d: Duration) -> Expect {
        self.grace = d;
        self
    }

    /// What `v` lacks to be the expected record (empty: it matches).
    pub fn misses(&self, v: &Value) -> Vec<String> {
        let r = match Record::of(v) {
            Ok(r) => r,
            Err(e) => return vec![format!("not an ECS record ({e})")],
        };
        let mut m = vec![];
        let s = |x: Option<&str>| x.unwrap_or("-").to_string();
        if r.event.kind != self.kind {
            m.push(format!("kind {}", r.event.kind.as_str()));
        }
        if !self.rules.is_empty() && !self.rules.iter().any(|x| r.rule_id() == Some(x)) {
            m.push(format!("rule {}", s(r.rule_id())));
        }
        if let Some(a) = &self.action {
            if r.action() != Some(a) {
                m.push(format!("action {}", s(r.action())));
            }
        }
        if let Some(p) = self.pid {
            if r.pid() != Some(p) {
                m.push(format!(
                    "pid {}",
                    s(r.pid().map(|p| p.to_string()).as_deref())
                ));
            }
        }
        if let Some(n) = &self.path {
            let (Naming::About(p) | Naming::Mentions(p)) = n;
            let named = matches!(n, Naming::Mentions(_))
                && r.message.as_ref().is_some_and(|m| m.contains(p.as_str()));
            if !r.is_about(p) && !named {
                m.push(format!("path {}", s(r.path())));
            }
        }
        if let Some(min) = self.severity {
            if r.snapmon.severity.is_none_or(|s| s < min) {
                m.push(format!(
                    "severity {}",
                    s(r.snapmon.severity.map(Severity::as_str))
                ));
            }
        }
        for t in &self.message {
            if !r.message.as_ref().is_some_and(|m| m.contains(t.as_str())) {
                m.push(format!("message without {t:?}"));
            }
        }
        for (k, want) in &self.detail {
            let got = &r.snapmon.detail[k.as_str()];
            if got != want.as_str() {
                m.push(format!("detail.{k} {}", s(got.as_str())));
            }
        }
        let write = r.snapmon.write.as_ref();
        if let Some(o) = self.offset {
            if write.map(|w| w.offset) != i64::try_from(o).ok() {
                m.push(format!(
                    "offset {}",
                    s(write.map(|w| w.offset.to_string()).as_deref())
                ));
            }
        }
        let class = &r.snapmon.classification;
        if let Some((field, after)) = &self.change {
            let changed = class["changes"].as_array().is_some_and(|c| {
                c.iter().any(|c| {
                    c["field"] == field.as_str()
                        && after.as_ref().is_none_or(|a| c["after"] == a.as_str())
                })
            });
            if !changed {
                m.push(format!("no change of {field}"));
            }
        }
        if self.write && write.is_none() {
            m.push("not a write".into());
        }
        if let Some(f) = &self.format {
            if class["format"] != f.as_str() {
                m.push(format!("format {}", s(class["format"].as_str())));
            }
        }
        m
    }

    pub fn matches(&self, v: &Value) -> bool {
        self.misses(v).is_empty()
    }

    /// Is `v` near the expected record: the same rule (or action) otherwise wrong, or any
    /// record about the same file or by the same process (what the agent did see)?
    fn near(&self, v: &Value) -> bool {
        let Ok(r) = Record::of(v) else { return false };
        if r.event.kind == Kind::State {
            return false;
        }
        let same_what = self.rules.iter().any(|x| r.rule_id() == Some(x))
            || self.action.as_ref().is_some_and(|a| r.action() == Some(a));
        let same_path = self.path.as_ref().is_some_and(|n| {
            let (Naming::About(p) | Naming::Mentions(p)) = n;
            r.is_about(p) || r.snapmon.detail["overlay_path"] == p.as_str()
        });
        let same_pid = self.pid.is_some_and(|p| r.pid() == Some(p));
        same_what || same_path || same_pid
    }
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.kind.as_str())?;
        if !self.rules.is_empty() {
            write!(f, " {}", self.rules.join(" or "))?;
        }
        if let Some(a) = &self.action {
            write!(f, " {a}")?;
        }
        if let Some(p) = self.pid {
            write!(f, " by pid {p}")?;
        }
        match &self.path {
            Some(Naming::About(p)) => write!(f, " about {p}")?,
            Some(Naming::Mentions(p)) => write!(f, " about or naming {p}")?,
            None => {}
        }
        if let Some(s) = self.severity {
            write!(f, " at {s:?} or above")?;
        }
        for t in &self.message {
            write!(f, " saying {t:?}")?;
        }
        for (k, v) in &self.detail {
            write!(f, " with {k} {v:?}")?;
        }
        if let Some(o) = self.offset {
            write!(f, " at offset {o}")?;
        }
        match &self.change {
            Some((field, Some(after))) => write!(f, " changing {field} to {after}")?,
            Some((field, None)) => write!(f, " changing {field}")?,
            None => {}
        }
        if self.write {
            write!(f, " writing")?;
        }
        if let Some(x) = &self.format {
            write!(f, " of a {x} file")?;
        }
        Ok(())
    }
}

/// One record on one line, for failure messages: kind, rule or action, actor, file, and
/// what the agent made of it.
pub fn line(v: &Value) -> String {
    let Ok(r) = Record::of(v) else {
        let raw = v.to_string();
        return raw[..raw.floor_char_boundary(300)].to_string();
    };
    let s = |x: Option<&str>| x.unwrap_or("-").to_string();
    let proc = r.process.as_ref();
    let mut l = format!(
        "{} {} {}[{}] {}",
        r.event.kind.as_str(),
        s(r.rule_id().or(r.action())),
        s(proc.and_then(|p| p.name.as_deref())),
        s(r.pid().map(|p| p.to_string()).as_deref()),
        s(r.path()),
    );
    if let Some(d) = r.dest() {
        let _ = write!(l, " → {d}");
    }
    if let Some(o) = r.snapmon.detail["overlay_path"].as_str() {
        let _ = write!(l, " (via {o})");
    }
    if let Some(sev) = r.snapmon.severity {
        let _ = write!(l, " {}", sev.as_str());
    }
    if let Some(m) = &r.message {
        let _ = write!(l, ": {}", &m[..m.floor_char_boundary(200)]);
    } else if !r.snapmon.classification.is_null() {
        let c = r.snapmon.classification.to_string();
        let _ = write!(l, " {}", &c[..c.floor_char_boundary(200)]);
    }
    l
}

/// At most this many near misses are printed (the last ones: nearest the trigger).
const SHOWN: usize = 25;

impl Agent {
    /// Every record written after `mark` (0: all of them).
    pub fn since(&mut self, mark: u64) -> Vec<Value> {
        let out = std::cell::RefCell::new(Vec::new());
        self.wait_from(mark, Duration::ZERO, |v| {
            out.borrow_mut().push(v.clone());
            false
        });
        out.into_inner()
    }

    /// Wait up to `within` for the record `e` describes and return it; fail with whether it
    /// came late, and the near misses: what the agent wrote of that rule, file and process.
    pub fn expect(&mut self, e: Expect, within: Duration) -> Value {
        let start = Instant::now();
        if let Some(v) = self.find(&e, within) {
            return v;
        }
        let waited = start.elapsed();
        let late = (!e.grace.is_zero()).then(|| match self.find(&e, e.grace) {
            Some(_) => format!("it came {:?} later", start.elapsed().saturating_sub(waited)),
            None => format!("nor {:?} later", e.grace),
        });
        let near: Vec<Value> = self
            .since(e.since.unwrap_or(0))
            .into_iter()
            .filter(|v| e.near(v))
            .collect();
        let mut msg = format!("no {e} within {within:?}");
        if let Some(late) = late {
            let _ = write!(msg, " ({late})");
        }
        if near.is_empty() {
            msg.push_str("; the agent wrote nothing of that rule, file or process");
        } else {
            let _ = write!(
                msg,
                "; near misses ({} of {}, with what each lacks):",
                near.len().min(SHOWN),
                near.len()
            );
            for v in &near[near.len().saturating_sub(SHOWN)..] {
                let _ = write!(msg, "\n  [{}] {}", e.misses(v).join(", "), line(v));
            }
        }
        panic!("{msg}");
    }

    /// [`Agent::expect`] for a test that times the agent: `within` counts from `t0` (the
    /// trigger finished), a miss waits 20 s more to tell late from never, and the latency is
    /// noted in the run's log under `what`.
    pub fn expect_timed(&mut self, e: Expect, within: Duration, t0: Instant, what: &str) -> Value {
        let rule = e.rules.join(" or ");
        let left = within.saturating_sub(t0.elapsed());
        let v = self.expect(e.grace(Duration::from_secs(20)), left);
        crate::note(&format!("{rule} for {what} after {:?}", t0.elapsed()));
        v
    }

    /// The first record matching `e`, waiting up to `timeout`: for a test that asserts an
    /// absence, or times the alert itself.
    pub fn find(&mut self, e: &Expect, timeout: Duration) -> Option<Value> {
        match e.since {
            // Only lines naming the rule (or the action) are parsed: a debug test binary
            // parses slower than a flood is written.
            Some(mark) => {
                let needle = match (e.rules.as_slice(), &e.action) {
                    ([one], _) => one.as_bytes().to_vec(),
                    ([], Some(a)) => format!("\"{a}\"").into_bytes(),
                    _ => vec![],
                };
                self.wait_from_lines(mark, timeout, &needle, |v| e.matches(v))
            }
            None => self.wait_for(timeout, |v| e.matches(v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_miss_names_each_field_that_differs() {
        let v = json!({
            "event": {"kind": "alert", "action": "pwrite64"},
            "rule": {"id": "SM-Q002"},
            "process": {"pid": 7, "name": "python3"},
            "file": {"path": "/s/a"},
            "snapmon": {"severity": "high", "write": {"offset": 60, "length": 4},
                        "detail": {"loop_device": "/dev/loop0"}},
        });
        let hit = Expect::alert("SM-Q002")
            .pid(7)
            .path("/s/a")
            .offset(60)
            .write()
            .detail("loop_device", "/dev/loop0")
            .severity_at_least(Severity::High);
        assert!(hit.matches(&v), "{:?}", hit.misses(&v));
        let miss = Expect::alert("SM-Q001")
            .or_rule("SM-Q005")
            .pid(8)
            .severity_at_least(Severity::Critical);
        assert_eq!(miss.misses(&v), ["rule SM-Q002", "pid 7", "severity high"]);
        assert_eq!(Expect::event("pwrite64").misses(&v), ["kind alert"]);
        assert!(Expect::alert("SM-Q001").or_rule("SM-Q002").matches(&v));
        assert_eq!(line(&v), "alert SM-Q002 python3[7] /s/a high");
    }

    #[test]
    fn a_record_that_is_not_ecs_is_a_miss() {
        let ocsf = json!({"class_uid": 1001, "activity_id": 1});
        assert_eq!(Expect::any_event().misses(&ocsf).len(), 1);
    }
}
