//! Rules stage, lineage and time (SM-L001, SM-L002): snapshot operations from an unusual lineage or
//! outside maintenance windows.

use crate::rules::{
    ctx::{
        Ctx, Hit,
        Kind::{Delete, Ioctl, Write},
    },
    def::RuleDef,
    helpers::{actor, cls, ioctl_name, leaf},
};
use crate::{classify::Format, event::Action, event::Event, record::Severity};

pub const L001: RuleDef = RuleDef {
    id: "SM-L001",
    name: "snapshot tool run from an unusual lineage",
    severity: Severity::High,
    technique: &["T1059", "T1490"],
    kinds: &[Write, Ioctl],
    rate: None,
    windowed: false,
    default_window: 0,
    default_enabled: true,
    supersedes: &[],
    eval: l001,
    summary: "a trusted snapshot tool (by identity) performs a snapshot operation with a `detection.suspicious_ancestors` ancestor (web server, container runtime), inside a container, or from a non-admin user's shell",
};

pub const L002: RuleDef = RuleDef {
    id: "SM-L002",
    name: "snapshot operation outside maintenance windows",
    severity: Severity::Medium,
    technique: &["T1490"],
    kinds: &[Write, Ioctl, Delete],
    rate: None,
    windowed: false,
    default_window: 0,
    default_enabled: false,
    supersedes: &[],
    eval: l002,
    summary: "snapshot create/delete (any actor) outside every `[[maintenance]]` window, host local time; off by default and inert without windows",
};

/// A snapshot operation: creates, deletes or restores snapshots.
pub fn snapshot_op(ev: &Event) -> Option<String> {
    let c = cls(ev)?;
    if c.snapshot_create || c.snapshot_destructive {
        return Some(ioctl_name(ev).to_string());
    }
    if let Some(ch) = c.changes.iter().find(|c| c.field == "nb_snapshots") {
        return Some(format!("nb_snapshots {}→{}", ch.before, ch.after));
    }
    if let Some(ch) = c
        .changes
        .iter()
        .find(|c| c.field.starts_with("lv_") && c.after.contains("snapshot"))
    {
        return Some(format!("{} {}", ch.field, ch.after));
    }
    if c.format == Format::Libvirt
        && matches!(ev.action, Action::Unlink | Action::Rename | Action::Create)
    {
        return Some(format!("{} of {}", ev.action, leaf(ev)));
    }
    None
}

fn l001(ctx: &mut Ctx) -> Option<Hit> {
    let ev = ctx.ev;
    if !ctx.trust.identity_any() {
        return None;
    }
    let op = snapshot_op(ev)?;
    let p = &ev.process;
    let bad_anc = p.ancestors.iter().find(|a| {
        ctx.det.suspicious.iter().any(|(g, by_path)| {
            if *by_path {
                g.matches(a.executable.as_bytes())
            } else {
                g.matches(a.name.as_bytes())
            }
        })
    });
    let shells = ["bash", "sh", "dash", "zsh", "fish", "ksh", "tcsh", "csh"];
    let why = if let Some(a) = bad_anc {
        format!("launched under {} ({})", a.name, a.executable)
    } else if let Some(cid) = &p.container_id {
        format!("inside container {}", &cid[..cid.len().min(12)])
    } else if !ctx.det.admin_users.contains(&p.uid)
        && p.ancestors
            .iter()
            .any(|a| shells.contains(&a.name.as_str()))
    {
        format!("from a shell of non-admin uid {}", p.uid)
    } else {
        return None;
    };
    // Once per process (not per pid: pids are reused): a snapshot is many writes.
    let who = (p.pid, p.start_ns);
    if ctx.st.lineage_seen.contains(&who) {
        return None;
    }
    ctx.st.lineage_seen.insert(who, ());
    Some(Hit::msg(format!(
        "{} {why} did {op} on {}",
        actor(ev),
        leaf(ev)
    )))
}

fn l002(ctx: &mut Ctx) -> Option<Hit> {
    let ev = ctx.ev;
    if ctx.windows.is_empty() {
        return None;
    }
    let op = snapshot_op(ev)?;
    let (wday, minute) = ctx
        .local
        .local(ev.ts_unix_ns.div_euclid(1_000_000_000) as i64);
    if ctx.windows.iter().any(|w| w.contains(wday, minute)) {
        return None;
    }
    Some(Hit::msg(format!(
        "{} did {op} on {} at {:02}:{:02} local time, outside maintenance windows ({})",
        actor(ev),
        leaf(ev),
        minute / 60,
        minute % 60,
        ctx.windows
            .iter()
            .map(|w| w.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}
