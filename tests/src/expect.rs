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

use crate::Agent;

/// `snapmon.severity`, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    /// A record's severity (`None` when it has none, or one this list does not know).
    pub fn of(v: &Value) -> Option<Severity> {
        Some(match v["snapmon"]["severity"].as_str()? {
            "info" => Severity::Info,
            "low" => Severity::Low,
            "medium" => Severity::Medium,
            "high" => Severity::High,
            "critical" => Severity::Critical,
            _ => return None,
        })
    }
}

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
    kind: &'static str,
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
    fn new(kind: &'static str) -> Expect {
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
            ..Expect::new("alert")
        }
    }

    /// An event record of `action` (`pwrite64`, `unlink`, `rename` …).
    pub fn event(action: &str) -> Expect {
        Expect {
            action: Some(action.into()),
            ..Expect::new("event")
        }
    }

    /// An event record of any action (narrow it by path, offset or change).
    pub fn any_event() -> Expect {
        Expect::new("event")
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
        let mut m = vec![];
        let s = |x: &Value| x.as_str().unwrap_or("-").to_string();
        if v["event"]["kind"] != self.kind {
            m.push(format!("kind {}", s(&v["event"]["kind"])));
        }
        if !self.rules.is_empty() && !self.rules.iter().any(|r| v["rule"]["id"] == r.as_str()) {
            m.push(format!("rule {}", s(&v["rule"]["id"])));
        }
        if let Some(a) = &self.action {
            if v["event"]["action"] != a.as_str() {
                m.push(format!("action {}", s(&v["event"]["action"])));
            }
        }
        if let Some(p) = self.pid {
            if v["process"]["pid"] != p {
                m.push(format!("pid {}", v["process"]["pid"]));
            }
        }
        if let Some(n) = &self.path {
            let (Naming::About(p) | Naming::Mentions(p)) = n;
            let about = v["file"]["path"] == p.as_str() || crate::dest(v) == Some(p.as_str());
            let named = matches!(n, Naming::Mentions(_))
                && v["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(p.as_str()));
            if !about && !named {
                m.push(format!("path {}", s(&v["file"]["path"])));
            }
        }
        if let Some(min) = self.severity {
            if Severity::of(v).is_none_or(|s| s < min) {
                m.push(format!("severity {}", s(&v["snapmon"]["severity"])));
            }
        }
        for t in &self.message {
            if !v["message"]
                .as_str()
                .is_some_and(|m| m.contains(t.as_str()))
            {
                m.push(format!("message without {t:?}"));
            }
        }
        for (k, want) in &self.detail {
            let got = &v["snapmon"]["detail"][k.as_str()];
            if got != want.as_str() {
                m.push(format!("detail.{k} {}", s(got)));
            }
        }
        if let Some(o) = self.offset {
            if v["snapmon"]["write"]["offset"] != o {
                m.push(format!("offset {}", v["snapmon"]["write"]["offset"]));
            }
        }
        if let Some((field, after)) = &self.change {
            let changed = v["snapmon"]["classification"]["changes"]
                .as_array()
                .is_some_and(|c| {
                    c.iter().any(|c| {
                        c["field"] == field.as_str()
                            && after.as_ref().is_none_or(|a| c["after"] == a.as_str())
                    })
                });
            if !changed {
                m.push(format!("no change of {field}"));
            }
        }
        if self.write && !v["snapmon"]["write"].is_object() {
            m.push("not a write".into());
        }
        if let Some(f) = &self.format {
            let got = &v["snapmon"]["classification"]["format"];
            if got != f.as_str() {
                m.push(format!("format {}", s(got)));
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
        if v["event"]["kind"] == "state" {
            return false;
        }
        let same_what = self.rules.iter().any(|r| v["rule"]["id"] == r.as_str())
            || self
                .action
                .as_ref()
                .is_some_and(|a| v["event"]["action"] == a.as_str());
        let same_path = self.path.as_ref().is_some_and(|n| {
            let (Naming::About(p) | Naming::Mentions(p)) = n;
            v["file"]["path"] == p.as_str()
                || crate::dest(v) == Some(p.as_str())
                || v["snapmon"]["detail"]["overlay_path"] == p.as_str()
        });
        let same_pid = self.pid.is_some_and(|p| v["process"]["pid"] == p);
        same_what || same_path || same_pid
    }
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.kind)?;
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
    let s = |x: &Value| x.as_str().unwrap_or("-").to_string();
    let mut l = format!(
        "{} {} {}[{}] {}",
        s(&v["event"]["kind"]),
        v["rule"]["id"]
            .as_str()
            .unwrap_or_else(|| v["event"]["action"].as_str().unwrap_or("-")),
        s(&v["process"]["name"]),
        v["process"]["pid"],
        s(&v["file"]["path"]),
    );
    if let Some(d) = crate::dest(v) {
        let _ = write!(l, " → {d}");
    }
    if let Some(o) = v["snapmon"]["detail"]["overlay_path"].as_str() {
        let _ = write!(l, " (via {o})");
    }
    if let Some(sev) = v["snapmon"]["severity"].as_str() {
        let _ = write!(l, " {sev}");
    }
    if let Some(m) = v["message"].as_str() {
        let _ = write!(l, ": {}", &m[..m.floor_char_boundary(200)]);
    } else if !v["snapmon"]["classification"].is_null() {
        let c = v["snapmon"]["classification"].to_string();
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
            Some(_) => format!("it came {:?} later", start.elapsed() - waited),
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
            // Only lines naming the rule are parsed: a debug test binary parses slower than
            // a flood is written.
            Some(mark) => {
                let needle = match e.rules.as_slice() {
                    [one] => one.as_bytes().to_vec(),
                    _ => vec![],
                };
                self.wait_from_lines(mark, timeout, &needle, |v| e.matches(v))
            }
            None => self.wait_for(timeout, |v| e.matches(v)),
        }
    }
}
