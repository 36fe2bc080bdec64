//! Rules stage, timestamps (SM-T001): a snapshot file re-stamped by an untrusted process.

use crate::rules::{
    ctx::{Ctx, Hit, Kind::Attr},
    def::RuleDef,
    helpers::{about_snapshot_file, actor, path_bytes},
};
use crate::{event::Action, record::Severity};

pub const T001: RuleDef = RuleDef {
    id: "SM-T001",
    name: "timestamps changed on a snapshot file",
    severity: Severity::Medium,
    technique: &["T1070.006"],
    kinds: &[Attr],
    rate: None,
    windowed: false,
    default_window: 0,
    default_enabled: true,
    supersedes: &[],
    eval: t001,
    summary: "utimes on a disk image or snapshot metadata file by a process no actor group trusts (not counting the creator stamping a file it just created)",
};

fn t001(ctx: &mut Ctx) -> Option<Hit> {
    let ev = ctx.ev;
    if ev.action != Action::Utimes || ctx.trust.any() {
        return None;
    }
    if !about_snapshot_file(ctx) {
        return None;
    }
    let p = path_bytes(ev);
    // `touch new-file` creates, then stamps: not anti-forensics.
    if ctx
        .st
        .created
        .get(&(ev.process.pid, p.to_vec()))
        .is_some_and(|&ts| ev.ts_unix_ns - ts < 2_000_000_000)
    {
        return None;
    }
    Some(Hit::msg(format!(
        "{} changed the timestamps of {}",
        actor(ev),
        String::from_utf8_lossy(p)
    )))
}
