//! Rules stage, deletion bursts (SM-B001): distinct snapshots deleted within a window, by any
//! actor.

use crate::rules::{
    ctx::{
        Ctx, Hit,
        Kind::{Delete, Ioctl, Write},
    },
    def::RuleDef,
    helpers::{actor, cls, fact, first_few, leaf},
};
use crate::{classify::Format, event::Action, event::Event, record::Severity};

pub const B001: RuleDef = RuleDef {
    id: "SM-B001",
    name: "burst of snapshot deletion",
    severity: Severity::High,
    technique: &["T1490"],
    kinds: &[Write, Delete, Ioctl],
    rate: Some((5, 60)),
    windowed: false,
    default_window: 0,
    default_enabled: true,
    supersedes: &[],
    eval: b001,
    summary: "`threshold` distinct snapshots deleted within `window_seconds` by any actor, trusted or not: qcow2 `snapshot_removed`, libvirt snapshot XML removal, LVM `lv_removed` of a snapshot, dm/btrfs/ZFS destructive ioctls",
};

/// Snapshots this event deletes, labelled for counting distinct ones.
pub fn deleted_snapshots(ev: &Event) -> Vec<String> {
    let mut out = Vec::new();
    let Some(c) = cls(ev) else { return out };
    for ch in &c.changes {
        match ch.field.as_str() {
            "snapshot_removed" if !ch.before.is_empty() => out.push(ch.before.clone()),
            "lv_removed" if ch.after.contains("snapshot") => {
                out.push(format!("lv:{}", ch.after.split(' ').next().unwrap_or("")))
            }
            _ => {}
        }
    }
    if c.format == Format::Libvirt
        && ev.action == Action::Unlink
        && fact(c, "kind") == Some("snapshot")
        && fact(c, "temp").is_none()
    {
        out.push(fact(c, "name").map_or_else(|| leaf(ev), str::to_string));
    }
    if c.snapshot_destructive {
        out.push(format!("ioctl#{}", ev.seq));
    }
    out
}

fn b001(ctx: &mut Ctx) -> Option<Hit> {
    let ev = ctx.ev;
    let gone = deleted_snapshots(ev);
    if gone.is_empty() {
        return None;
    }
    let mut n = 0;
    for g in gone {
        n = ctx
            .st
            .deletions
            .add(ev.ts_unix_ns, ctx.window_ns, ev.seq, g);
    }
    if n < ctx.threshold as usize {
        return None;
    }
    let (labels, seqs) = ctx.st.deletions.take();
    let mut h = Hit::msg(format!(
        "{} snapshots deleted within {} s ({}), the last by {} in {}",
        labels.len(),
        ctx.window_ns / 1_000_000_000,
        first_few(&labels, 5),
        actor(ev),
        leaf(ev)
    ));
    h.related = seqs;
    Some(h)
}
