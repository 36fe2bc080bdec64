//! Sink stage, live tail: one human line per record, alerts coloured by severity, lineage
//! compact, and nothing raw from the kernel ever reaching the terminal.
//!
//! On a terminal a status line sits below the last record: `CLEAR_LINE` + [`Status::line`]
//! without a newline, wiped before the next record is printed and drawn again after it, so
//! records scroll above it and it never pushes alerts off screen.

use std::io::Write;

use crate::{
    event::{escape_bytes, Event},
    record::{Record, Severity},
    sink::json::rfc3339,
};

const RESET: &str = "\x1b[0m";

fn sev_colour(s: Severity) -> &'static str {
    match s {
        Severity::Info => "\x1b[2m",
        Severity::Low => "\x1b[36m",
        Severity::Medium => "\x1b[33m",
        Severity::High => "\x1b[31m",
        Severity::Critical => "\x1b[1;97;41m",
    }
}

fn time_of(unix_ns: i128) -> String {
    // HH:MM:SS.mmm from the RFC 3339 form.
    let s = rfc3339(unix_ns);
    s.get(11..23).unwrap_or("").to_string()
}

fn path_of(e: &Event) -> String {
    let f = e.file.as_ref();
    let p = f.and_then(|f| f.path.as_ref()).map(|p| p.display());
    let mut s = match (p, f) {
        (Some(p), _) => p,
        (None, Some(f)) => format!("<inode {}>", f.ino),
        (None, None) => String::new(),
    };
    if let Some(t) = e.target.as_ref().and_then(|t| t.path.as_ref()) {
        s.push_str(" → ");
        s.push_str(&t.display());
    }
    s
}

/// Render one event's core line (no colour).
pub fn event_line(e: &Event) -> String {
    let mut s = format!("{} {:<18} {}", time_of(e.ts_unix_ns), e.action, path_of(e));
    if let Some(w) = &e.write {
        if w.offset >= 0 {
            s.push_str(&format!(" @{}+{}", w.offset, w.length));
        } else {
            s.push_str(&format!(" +{}", w.length));
        }
    }
    if let Some(c) = &e.classification {
        if !c.regions.is_empty() {
            s.push_str(&format!(" [{}]", raw(&c.regions.join(","))));
        }
        if let Some(n) = &c.ioctl_name {
            s.push_str(&format!(" {}", raw(n)));
        }
        for ch in &c.changes {
            s.push_str(&format!(" {}", raw(&ch.to_string())));
        }
    } else if let Some(i) = &e.ioctl {
        s.push_str(&format!(" cmd={:#010x}", i.cmd));
    }
    s.push_str(&format!(
        "  {}[{}]",
        raw(&e.process.lineage()),
        e.process.pid
    ));
    s
}

/// Text from the kernel or a file that was never escaped (process names, decoded fields).
fn raw(s: &str) -> String {
    escape_bytes(s.as_bytes())
}

/// Escape control characters that slipped into composed text (names are escaped already).
fn escape_line(s: &str) -> String {
    if s.chars().any(|c| c.is_control()) {
        escape_bytes(s.as_bytes())
    } else {
        s.to_string()
    }
}

pub fn render(r: &Record, colour: bool) -> Option<String> {
    Some(match r {
        Record::Event(e) => {
            let l = event_line(e);
            if colour {
                format!("\x1b[2m·{RESET} {l}")
            } else {
                format!("· {l}")
            }
        }
        Record::Alert(a) => {
            let head = format!("{} {:<8}", a.severity.as_str().to_uppercase(), a.rule_id);
            let body = format!("{}  {}", escape_line(&a.message), event_line(&a.event));
            if colour {
                format!("{}! {head}{RESET} {body}", sev_colour(a.severity))
            } else {
                format!("! {head} {body}")
            }
        }
        Record::State(s) => format!("# {} {}", s.action, escape_line(&s.detail.to_string())),
        Record::Metric(m) if m.action == "stats" => stats_line(&m.detail),
        Record::Metric(m) => format!("# {} {}", m.action, escape_line(&m.detail.to_string())),
    })
}

/// The periodic `stats` record in one short line: its JSON (every hook, every sink) is for
/// machines and would flood a terminal. The three hooks that cost the most CPU are named.
fn stats_line(d: &serde_json::Value) -> String {
    let n = |k: &str| d[k].as_u64().unwrap_or(0);
    let mut s = format!(
        "# stats {} events · {} alerts · {} lost · {}/{} hooks",
        n("events"),
        n("alerts"),
        n("lost"),
        n("hooks_attached"),
        n("hooks_total")
    );
    let hooks = &d["hooks"];
    if hooks["enabled"] != true {
        let why = hooks["note"].as_str().unwrap_or("unknown");
        s.push_str(&format!(" · no hook runs: {}", escape_line(why)));
        return s;
    }
    let mut progs: Vec<(&String, u64, u64)> = hooks["programs"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    let g = |f: &str| v[f].as_u64().unwrap_or(0);
                    (k, g("runs"), g("run_ns"))
                })
                .collect()
        })
        .unwrap_or_default();
    progs.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(b.0)));
    let top: Vec<String> = progs
        .iter()
        .take(3)
        .filter(|p| p.1 > 0)
        .map(|(name, runs, ns)| format!("{} {runs}× {:.1} ms", escape_line(name), *ns as f64 / 1e6))
        .collect();
    if !top.is_empty() {
        s.push_str(&format!(" · busiest: {}", top.join(", ")));
    }
    s
}

/// Carriage return + erase line: where the status line is redrawn.
pub const CLEAR_LINE: &str = "\r\x1b[K";

/// The in-place status line and the previous sample it computes rates from.
#[derive(Debug, Default)]
pub struct Status {
    last: Option<(std::time::Instant, u64)>,
    rate: f64,
}

impl Status {
    /// `── 12.5 ev/s · 3 alerts (1 high+) · 0 lost · 58/60 hooks · 2 sink drops ──`
    pub fn line(&mut self, s: &crate::metrics::Snapshot, now: std::time::Instant) -> String {
        match self.last {
            Some((t, n)) => {
                let dt = now.duration_since(t).as_secs_f64();
                if dt >= 0.5 {
                    self.rate = s.events.saturating_sub(n) as f64 / dt;
                    self.last = Some((now, s.events));
                }
            }
            None => self.last = Some((now, s.events)),
        }
        status_text(s, self.rate)
    }
}

/// Status text for a snapshot and rate (dim, so alerts above stay the loudest thing).
pub fn status_text(s: &crate::metrics::Snapshot, rate: f64) -> String {
    let mut t = format!("\x1b[2m── {rate:.1} ev/s · {} alerts", s.alerts);
    if s.alerts_high > 0 {
        t.push_str(&format!(" ({} high+)", s.alerts_high));
    }
    t.push_str(&format!(" · {} lost", s.lost));
    if s.hooks_total > 0 {
        t.push_str(&format!(" · {}/{} hooks", s.hooks_attached, s.hooks_total));
    }
    if s.sink_drops > 0 {
        t.push_str(&format!(" · {} sink drops", s.sink_drops));
    }
    t.push_str(&format!(" ──{RESET}"));
    t
}

pub fn write_line(w: &mut dyn Write, r: &Record, colour: bool) -> std::io::Result<()> {
    if let Some(l) = render(r, colour) {
        writeln!(w, "{l}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Ancestor, Bytes, FileInfo, ProcessInfo, WriteInfo};

    fn ev() -> Event {
        Event {
            ts_unix_ns: 1_795_887_000_123_000_000,
            action: "pwrite64",
            process: ProcessInfo {
                pid: 42,
                name: "python3".into(),
                ancestors: vec![
                    Ancestor {
                        name: "bash".into(),
                        ..Default::default()
                    },
                    Ancestor {
                        name: "sshd".into(),
                        ..Default::default()
                    },
                ]
                .into(),
                ..Default::default()
            },
            file: Some(FileInfo {
                path: Some(Bytes(b"/s/vm1\x1b[31m.qcow2".to_vec())),
                ..Default::default()
            }),
            write: Some(WriteInfo {
                op: "pwrite64",
                offset: 60,
                length: 12,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn golden_event_line_escapes_terminal_sequences() {
        let l = render(&Record::Event(ev()), false).unwrap();
        assert_eq!(l, "· 17:30:00.123 pwrite64           /s/vm1\\x1b[31m.qcow2 @60+12  python3 ← bash ← sshd[42]");
        assert!(!l.contains('\x1b'));
    }

    #[test]
    fn golden_alert_lines_plain_and_coloured() {
        let a = crate::sink::fixtures::alert(3, Severity::High);
        assert_eq!(
            render(&a, false).unwrap(),
            "! HIGH SM001    python3 (← bash ← sshd) set nb_snapshots 3→0 in vm1.qcow2  17:30:00.126 pwrite64           /var/lib/libvirt/images/vm1.qcow2 @60+4 [header.nb_snapshots] nb_snapshots: 3 → 0  python3 ← bash ← sshd[4242]"
        );
        let c = render(&crate::sink::fixtures::alert(3, Severity::Critical), true).unwrap();
        assert!(
            c.starts_with("\x1b[1;97;41m! CRITICAL SM001   \x1b[0m python3"),
            "{c:?}"
        );
        let low = render(&crate::sink::fixtures::alert(3, Severity::Low), true).unwrap();
        assert!(low.starts_with("\x1b[36m! LOW"), "{low:?}");
    }

    #[test]
    fn golden_hostile_names_never_reach_the_terminal_raw() {
        let mut e = ev();
        e.process.name = "evil\x07\x1b]0;pwned\x07".into();
        std::sync::Arc::make_mut(&mut e.process.ancestors)[0].name = "ba\rsh".into();
        e.file.as_mut().unwrap().path = Some(Bytes(b"/s/\xc2\x9b31m\xff\n.qcow2".to_vec()));
        e.target = Some(FileInfo {
            path: Some(Bytes(b"/s/\x1b[2J".to_vec())),
            ..Default::default()
        });
        let l = render(&Record::Event(e), true).unwrap();
        assert_eq!(
            l,
            "\x1b[2m·\x1b[0m 17:30:00.123 pwrite64           /s/\\xc2\\x9b31m\\xff\\x0a.qcow2 → /s/\\x1b[2J @60+12  evil\\x07\\x1b]0;pwned\\x07 ← ba\\x0dsh ← sshd[42]"
        );
        // Only the sink's own colour codes remain.
        assert_eq!(l.matches('\x1b').count(), 2);
        assert!(!l.contains('\r') && !l.contains('\n') && !l.contains('\x07'));
        let s = render(
            &Record::State(crate::record::StateRecord {
                action: "started",
                detail: serde_json::json!({"note": "a\u{1b}[31mb"}),
            }),
            false,
        )
        .unwrap();
        assert_eq!(s, "# started {\"note\":\"a\\u001b[31mb\"}");
    }

    #[test]
    fn golden_stats_record_is_one_short_line() {
        let stats = |hooks: serde_json::Value| {
            Record::Metric(crate::record::MetricRecord {
                action: "stats",
                detail: serde_json::json!({
                    "events": 120, "alerts": 2, "lost": 1, "hooks_attached": 50, "hooks_total": 51,
                    "hooks": hooks, "pipeline": {"received": 999}, "sinks": {"stdout": {}},
                }),
            })
        };
        let on = stats(
            serde_json::json!({"enabled": true, "note": null, "programs": {
                "sys_enter_openat": {"attach": "a", "runs": 64196, "run_ns": 9_718_790},
                "sys_enter_pwrite64": {"attach": "a", "runs": 100, "run_ns": 105_393},
                "sys_exit_openat": {"attach": "a", "runs": 64196, "run_ns": 7_504_280},
                "sys_enter_write": {"attach": "a", "runs": 5000, "run_ns": 2_000_000},
                "sys_enter_mkdir": {"attach": "a", "runs": 0, "run_ns": 0},
            }}),
        );
        assert_eq!(
            render(&on, true).unwrap(),
            "# stats 120 events · 2 alerts · 1 lost · 50/51 hooks · busiest: sys_enter_openat 64196× 9.7 ms, sys_exit_openat 64196× 7.5 ms, sys_enter_write 5000× 2.0 ms"
        );
        let off = stats(
            serde_json::json!({"enabled": false, "note": "the kernel refused BPF_ENABLE_STATS\u{1b}[2J", "programs": {}}),
        );
        assert_eq!(
            render(&off, false).unwrap(),
            "# stats 120 events · 2 alerts · 1 lost · 50/51 hooks · no hook runs: the kernel refused BPF_ENABLE_STATS\\x1b[2J"
        );
    }

    #[test]
    fn golden_status_line() {
        let snap = crate::metrics::Snapshot {
            events: 1200,
            alerts: 3,
            alerts_high: 1,
            lost: 0,
            hooks_attached: 58,
            hooks_total: 60,
            sink_drops: 2,
        };
        assert_eq!(
            status_text(&snap, 12.5),
            "\x1b[2m── 12.5 ev/s · 3 alerts (1 high+) · 0 lost · 58/60 hooks · 2 sink drops ──\x1b[0m"
        );
        let mut st = Status::default();
        let t0 = std::time::Instant::now();
        st.line(&crate::metrics::Snapshot::default(), t0);
        let l = st.line(
            &crate::metrics::Snapshot {
                events: 100,
                ..Default::default()
            },
            t0 + std::time::Duration::from_secs(2),
        );
        assert!(l.contains("50.0 ev/s"), "{l}");
        assert!(!l.contains('\n'));
    }
}
