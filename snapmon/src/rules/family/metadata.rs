//! Rules stage, tool metadata (SM-M001, SM-M002): libvirt snapshot XML and LVM metadata changed by
//! a process outside the tool's actor group.

use crate::rules::{
    ctx::{
        Ctx, Hit,
        Kind::{Attr, Create, Delete, Rename, Write},
    },
    def::RuleDef,
    helpers::{
        actor, by_target, cls, diff_text, fact, has_fact, how, subject_leaf, subject_path, verb,
    },
};
use crate::{classify::Format, event::Action, record::Severity};

pub const M001: RuleDef = RuleDef {
    id: "SM-M001",
    name: "libvirt snapshot metadata changed by a non-libvirt process",
    severity: Severity::High,
    technique: &["T1565.001", "T1490"],
    kinds: &[Write, Create, Rename, Delete, Attr],
    rate: None,
    windowed: false,
    default_window: 0,
    default_enabled: true,
    supersedes: &[],
    eval: m001,
    summary: "snapshot/checkpoint XML under libvirt's qemu directories written, created, renamed, removed or re-stamped by a non-`libvirt` actor",
};

pub const M002: RuleDef = RuleDef {
    id: "SM-M002",
    name: "LVM metadata changed by a non-LVM process",
    severity: Severity::High,
    technique: &["T1565.001", "T1490"],
    kinds: &[Write, Create, Rename, Delete, Attr],
    rate: None,
    windowed: false,
    default_window: 0,
    default_enabled: true,
    supersedes: &[],
    eval: m002,
    summary:
        "/etc/lvm/{backup,archive} files, a PV label or metadata area written by a non-`lvm` actor",
};

/// Anything but an open for writing or an ioctl (judged by what it did, elsewhere).
fn changes_something(action: Action) -> bool {
    !matches!(action, Action::OpenWrite | Action::Ioctl)
}

fn m001(ctx: &mut Ctx) -> Option<Hit> {
    let ev = ctx.ev;
    let c = cls(ev)?;
    if c.format != Format::Libvirt || !changes_something(ev.action) || ctx.trust.by("libvirt") {
        return None;
    }
    let kind = fact(c, "kind").unwrap_or("snapshot");
    let dom = fact(c, "domain").unwrap_or("?");
    let replaced = has_fact(c, "replaced");
    let what = match ev.action {
        Action::Unlink => "removed",
        Action::Rename if replaced => "replaced",
        Action::Rename if by_target(ev) => "renamed a file into",
        Action::Rename => "renamed",
        Action::Link => "linked a file as",
        Action::Create => "created",
        Action::Utimes => "re-stamped",
        Action::Chmod | Action::Chown => "changed ownership or mode of",
        _ => "modified",
    };
    Some(Hit::msg(format!(
        "{} {what} libvirt {kind} metadata {} of domain {dom}{}",
        actor(ev),
        subject_leaf(ev),
        how(ev)
    )))
}

fn m002(ctx: &mut Ctx) -> Option<Hit> {
    let ev = ctx.ev;
    let c = cls(ev)?;
    let meta = match c.format {
        Format::LvmBackup => true,
        Format::Lvm => c.regions.iter().any(|r| r != "lvm.data"),
        Format::Unset
        | Format::Qcow2
        | Format::Libvirt
        | Format::Dm
        | Format::Btrfs
        | Format::Zfs
        | Format::Loop
        | Format::Unknown
        | Format::File => false,
    };
    if !meta || !changes_something(ev.action) || ctx.trust.by("lvm") {
        return None;
    }
    let regions = c.regions.join(", ");
    let d = diff_text(c.changes.iter());
    Some(Hit::msg(format!(
        "{} {} LVM metadata ({regions}) in {}{}{}",
        actor(ev),
        verb(ev.action),
        String::from_utf8_lossy(subject_path(ev)),
        how(ev),
        if d.is_empty() {
            String::new()
        } else {
            format!(": {d}")
        }
    )))
}
