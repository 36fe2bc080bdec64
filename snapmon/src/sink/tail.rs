//! Sink stage, live tail: one human line per record, alerts coloured by severity, lineage
//! compact, and nothing raw from the kernel ever reaching the terminal.
//!
//! On a terminal a status line sits below the last record: `CLEAR_LINE` + [`Status::line`]
//! without a newline, wiped before the next record is printed and drawn again after it, so
//! records scroll above it and it never pushes alerts off screen.

use std::io::Write;

use crate::{
    clock::rfc3339,
    event::{escape_bytes, Event},
    record::{Record, Severity},
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
            s.push_str(&format!(" [{}]", raw(&summarise(&c.regions, ","))));
        }
        if let Some(n) = &c.ioctl_name {
            s.push_str(&format!(" {}", raw(n)));
        }
        for ch in c.changes.iter().take(LIST_MAX) {
            s.push_str(&format!(" {}", raw(&ch.to_string())));
        }
        if c.changes.len() > LIST_MAX {
            s.push_str(&format!(" (+{} more changes)", c.changes.len() - LIST_MAX));
        }
    } else if let Some(i) = &e.ioctl {
        s.push_str(&format!(" cmd={:#010x}", i.cmd));
    }
    if e.no_actor {
        // The agent's own observation: no process to name (not pid 0).
        s.push_str("  (seen by the agent, no actor)");
    } else {
        s.push_str(&format!(
            "  {}[{}]",
            raw(&e.process.lineage()),
            e.process.pid
        ));
    }
    s
}

/// Items of a list shown on one line; the rest are counted.
const LIST_MAX: usize = 3;

/// `a,b,c,+5 more`: a long list (regions of a big write, gaps) summarised.
fn summarise<S: AsRef<str>>(items: &[S], sep: &str) -> String {
    let mut s: Vec<&str> = items.iter().take(LIST_MAX).map(AsRef::as_ref).collect();
    let more;
    if items.len() > LIST_MAX {
        more = format!("+{} more", items.len() - LIST_MAX);
        s.push(&more);
    }
    s.join(sep)
}

/// Text from the kernel or a file that was never escaped (process names, decoded fields).
fn raw(s: &str) -> String {
    escape_bytes(s.as_bytes())
}

/// Escape control and bidi characters that slipped into composed text (names are escaped
/// already).
fn escape_line(s: &str) -> String {
    crate::text::escape_composed(s)
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
            let body = alert_body(a);
            if colour {
                format!("{}! {head}{RESET} {body}", sev_colour(a.severity))
            } else {
                format!("! {head} {body}")
            }
        }
        Record::State(s) => return state_lines(s.action, &s.detail),
        Record::Metric(m) if m.action == "stats" => stats_line(&m.detail),
        // The per-program counters; `stats` names the busiest.
        Record::Metric(m) if m.action == "hook_runs" => return None,
        Record::Metric(m) => metric_line(m.action, &m.detail),
    })
}

/// An alert on its own: when, the sentence (actor, action, target, diff), the full path,
/// the pid and the ATT&CK ids. The event line it came from is not repeated.
fn alert_body(a: &crate::record::Alert) -> String {
    let e = &a.event;
    let mut s = format!("{} {}", time_of(e.ts_unix_ns), escape_line(&a.message));
    let path = path_of(e);
    if !path.is_empty() {
        s.push_str(&format!(" · {path}"));
    }
    if !e.no_actor {
        s.push_str(&format!(" · pid {}", e.process.pid));
    }
    if !a.technique.is_empty() {
        s.push_str(&format!(" · {}", escape_line(&a.technique.join(","))));
    }
    s
}

/// A state record in words. The start-up detail records are summed up by `started`, so
/// they print nothing; `started` is the 3–5 line summary that opens the screen.
fn state_lines(action: &str, d: &serde_json::Value) -> Option<String> {
    let n = |k: &str| d[k].as_u64().unwrap_or(0);
    let t = |k: &str| escape_line(d[k].as_str().unwrap_or(""));
    Some(match action {
        "started" => {
            let mut lines = vec![format!(
                "# snapmon {} started in {:.1} s: {} backend, {} of {} hooks live",
                t("version"),
                n("startup_ms") as f64 / 1000.0,
                t("backend"),
                n("hooks_attached"),
                n("hooks_total")
            )];
            let gaps: Vec<String> = d["gaps"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|g| g.as_str())
                // The name without its parenthesised examples.
                .map(|g| escape_line(g.split(" (").next().unwrap_or(g)))
                .collect();
            if !gaps.is_empty() {
                let why = d["missing_hooks_reason"]
                    .as_str()
                    .map(|r| format!(" ({})", escape_line(r)))
                    .unwrap_or_default();
                lines.push(format!(
                    "# not covered{why}: {}; see `snapmon doctor`",
                    summarise(&gaps, ", ")
                ));
            }
            let roots: Vec<String> = d["roots"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.as_str().map(escape_line))
                .collect();
            let mut shown = summarise(&roots, ", ");
            if n("stores") as usize > roots.len() {
                shown.push_str(&format!(", +{} more", n("stores") as usize - roots.len()));
            }
            lines.push(format!(
                "# watching {} stores ({} files, {} dirs): {shown}",
                n("stores"),
                n("files"),
                n("dirs")
            ));
            let on_off = |k: &str| if d[k] == true { "on" } else { "off" };
            let mut last = format!(
                "# enforcement {} · response {} · policy {}",
                on_off("enforcement_active"),
                on_off("response_active"),
                t("policy")
            );
            if n("rule_warning_count") > 0 {
                last.push_str(&format!(
                    " · {} rule warnings (`snapmon policy check`)",
                    n("rule_warning_count")
                ));
            }
            lines.push(last);
            for w in d["warnings"].as_array().into_iter().flatten() {
                lines.push(format!(
                    "# WARNING: {}",
                    escape_line(w.as_str().unwrap_or(""))
                ));
            }
            lines.join("\n")
        }
        "stopped" => {
            let p = &d["stats"]["pipeline"];
            let g = |k: &str| p[k].as_u64().unwrap_or(0);
            format!(
                "# stopped ({}): {} events, {} alerts, {} decode errors",
                t("reason"),
                g("events"),
                g("alerts"),
                g("decode_errors")
            )
        }
        "reloaded" => format!("# reloaded policy {}", t("policy")),
        "reload_failed" => format!(
            "# reload of {} failed, the running policy is kept: {}",
            t("policy"),
            t("error")
        ),
        "hooks" | "coverage" | "stores" | "stores_skipped" | "kernel_fields" | "enforcement"
        | "rule_warnings" | "sinks" | "response" => return None,
        other => format!("# {}", escape_line(other)),
    })
}

/// A loss or filter record in words.
fn metric_line(action: &str, d: &serde_json::Value) -> String {
    match action {
        "lost" => {
            let mut parts = Vec::new();
            for src in ["kernel", "decoder", "watch", "agent"] {
                for (cause, n) in d[src].as_object().into_iter().flatten() {
                    parts.push(format!("{src} {} {}", escape_line(cause), n));
                }
            }
            for s in d["sinks"].as_array().into_iter().flatten() {
                parts.push(format!(
                    "sink {} {} {}",
                    escape_line(s["sink"].as_str().unwrap_or("")),
                    escape_line(s["cause"].as_str().unwrap_or("")),
                    s["count"]
                ));
            }
            format!("# LOST records: {}", summarise(&parts, " · "))
        }
        "filtered" => format!(
            "# filtered {} trusted writes outside metadata in the kernel ({} since start, {} files)",
            d["kernel_writes"], d["kernel_total"], d["files"]
        ),
        other => format!("# {}", escape_line(other)),
    }
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
    let mut progs: Vec<(&str, u64, u64)> = hooks["busiest"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            let g = |f: &str| v[f].as_u64().unwrap_or(0);
            (v["program"].as_str().unwrap_or(""), g("runs"), g("run_ns"))
        })
        .collect();
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
    use crate::event::Action;
    use crate::event::{Ancestor, Bytes, FileInfo, ProcessInfo, WriteInfo};

    fn ev() -> Event {
        Event {
            ts_unix_ns: 1_795_887_000_123_000_000,
            action: Action::Pwrite64,
            process: ProcessInfo {
                pid: 42,
                ..ProcessInfo::with_names(crate::event::ProcessNames {
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
                })
            },
            file: Some(FileInfo {
                path: Some(Bytes(b"/s/vm1\x1b[31m.qcow2".to_vec())),
                ..Default::default()
            }),
            write: Some(WriteInfo {
                op: crate::event::WriteOp::Pwrite64,
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
        // Its own context, not the event line again.
        assert_eq!(
            render(&a, false).unwrap(),
            "! HIGH SM001    17:30:00.126 python3 (← bash ← sshd) set nb_snapshots 3→0 in vm1.qcow2 · /var/lib/libvirt/images/vm1.qcow2 · pid 4242 · T1490"
        );
        let c = render(&crate::sink::fixtures::alert(3, Severity::Critical), true).unwrap();
        assert!(
            c.starts_with("\x1b[1;97;41m! CRITICAL SM001   \x1b[0m 17:30:00.126 python3"),
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
                action: "reload_failed",
                detail: serde_json::json!({"policy": "/p", "error": "a\u{1b}[31mb"}),
            }),
            false,
        )
        .unwrap();
        assert_eq!(
            s,
            "# reload of /p failed, the running policy is kept: a\\x1b[31mb"
        );
    }

    #[test]
    fn golden_a_bidi_override_cannot_reorder_what_the_operator_reads() {
        // Shown raw, U+202E makes "…/\u{202E}2woqc.gol" read as "…/log.qcow2".
        let mut e = ev();
        e.file.as_mut().unwrap().path = Some(Bytes("/s/\u{202E}2woqc.gol".into()));
        e.process.name = "py\u{2066}thon".into();
        let l = render(&Record::Event(e), false).unwrap();
        assert_eq!(
            l,
            "· 17:30:00.123 pwrite64           /s/\\xe2\\x80\\xae2woqc.gol @60+12  py\\xe2\\x81\\xa6thon ← bash ← sshd[42]"
        );
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
            serde_json::json!({"enabled": true, "note": null, "busiest": [
                {"program": "sys_enter_openat", "attach": "a", "runs": 64196, "run_ns": 9_718_790},
                {"program": "sys_enter_pwrite64", "attach": "a", "runs": 100, "run_ns": 105_393},
                {"program": "sys_exit_openat", "attach": "a", "runs": 64196, "run_ns": 7_504_280},
                {"program": "sys_enter_write", "attach": "a", "runs": 5000, "run_ns": 2_000_000},
                {"program": "sys_enter_mkdir", "attach": "a", "runs": 0, "run_ns": 0},
            ]}),
        );
        assert_eq!(
            render(&on, true).unwrap(),
            "# stats 120 events · 2 alerts · 1 lost · 50/51 hooks · busiest: sys_enter_openat 64196× 9.7 ms, sys_exit_openat 64196× 7.5 ms, sys_enter_write 5000× 2.0 ms"
        );
        let off = stats(
            serde_json::json!({"enabled": false, "note": "the kernel refused BPF_ENABLE_STATS\u{1b}[2J", "busiest": []}),
        );
        assert_eq!(
            render(&off, false).unwrap(),
            "# stats 120 events · 2 alerts · 1 lost · 50/51 hooks · no hook runs: the kernel refused BPF_ENABLE_STATS\\x1b[2J"
        );
    }

    /// What a person sees first: the start-up records of a big host, then an event. The
    /// summary is a few lines of words; the detail records stay in the log.
    #[test]
    fn golden_first_screen_is_short_words_not_json() {
        let (hooks, watch, roots, warnings) = crate::state::tests::big_start();
        let info = crate::state::tests::info_fixture(&hooks, &watch, &roots, &warnings);
        let mut screen: Vec<String> = crate::state::started(&info)
            .into_iter()
            .filter_map(|r| render(&Record::State(r), false))
            .flat_map(|l| l.lines().map(String::from).collect::<Vec<_>>())
            .collect();
        screen.push(render(&Record::Event(ev()), false).unwrap());
        assert!(screen.len() <= 10, "{}", screen.join("\n"));
        for l in &screen {
            assert!(
                !l.contains('{') && !l.contains("\":"),
                "JSON on screen: {l}"
            );
        }
        let (attached, total) = (
            hooks.iter().filter(|h| h.attached_to.is_some()).count(),
            hooks.len(),
        );
        assert!(
            screen[0].contains(&format!("{attached} of {total} hooks live")),
            "{}",
            screen[0]
        );
        assert!(
            screen[1].starts_with("# not covered (Operation not permitted"),
            "{}",
            screen[1]
        );
        assert!(
            screen[2].starts_with(
                "# watching 200 stores (60000 files, 900 dirs): /srv/images/pool0/vm-disks"
            ),
            "{}",
            screen[2]
        );
        assert!(
            screen[2].ends_with("+197 more"),
            "long lists are summarised: {}",
            screen[2]
        );
    }

    #[test]
    fn golden_state_and_metric_records_are_words() {
        use crate::record::{MetricRecord, StateRecord};
        let st =
            |action, detail| render(&Record::State(StateRecord { action, detail }), false).unwrap();
        let me = |action, detail| {
            render(&Record::Metric(MetricRecord { action, detail }), false).unwrap()
        };
        assert_eq!(
            st(
                "stopped",
                serde_json::json!({"reason": "SIGTERM", "stats": {"pipeline": {"events": 12, "alerts": 1, "decode_errors": 0}}})
            ),
            "# stopped (SIGTERM): 12 events, 1 alerts, 0 decode errors"
        );
        assert_eq!(
            me(
                "filtered",
                serde_json::json!({"kernel_writes": 10, "kernel_total": 50, "files": 2})
            ),
            "# filtered 10 trusted writes outside metadata in the kernel (50 since start, 2 files)"
        );
        assert_eq!(
            me(
                "lost",
                serde_json::json!({"kernel": {"ringbuf_full": 3}, "sinks": [{"sink": "tcp:h:1", "cause": "spill_full", "count": 12}]})
            ),
            "# LOST records: kernel ringbuf_full 3 · sink tcp:h:1 spill_full 12"
        );
        assert_eq!(
            st("reloaded", serde_json::json!({"policy": "/etc/p.toml"})),
            "# reloaded policy /etc/p.toml"
        );
    }

    #[test]
    fn golden_long_region_lists_are_summarised() {
        let mut e = ev();
        e.classification = Some(crate::classify::Classification {
            regions: (0..40).map(|i| format!("l2[{i}]")).collect(),
            ..Default::default()
        });
        let l = render(&Record::Event(e), false).unwrap();
        assert!(l.contains(" [l2[0],l2[1],l2[2],+37 more] "), "{l}");
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
