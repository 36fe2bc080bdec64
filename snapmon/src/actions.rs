//! Names of what the kernel's enforcement and circuit breaker did: the ECS action of an LSM
//! decision or a response record, and the words of its detail. Model layer: enrich names
//! kernel records with them, respond and enforce report with them.

use snapmon_common::respond as r;

use crate::event::Action;

/// ECS action of a kernel LSM decision record (`denied`: refused, else would-be).
pub fn deny_action(op: &str, denied: bool) -> Action {
    use Action as A;
    let ops: &[(&str, Action, Action)] = &[
        ("write", A::DenyWrite, A::WouldDenyWrite),
        ("open_write", A::DenyOpenWrite, A::WouldDenyOpenWrite),
        ("truncate", A::DenyTruncate, A::WouldDenyTruncate),
        ("unlink", A::DenyUnlink, A::WouldDenyUnlink),
        ("rename", A::DenyRename, A::WouldDenyRename),
        ("link", A::DenyLink, A::WouldDenyLink),
        ("mmap_write", A::DenyMmapWrite, A::WouldDenyMmapWrite),
        ("ioctl", A::DenyIoctl, A::WouldDenyIoctl),
    ];
    ops.iter()
        .find(|(o, _, _)| *o == op)
        .map(|(_, d, w)| if denied { *d } else { *w })
        .unwrap_or(A::DenyUnknown)
}

/// ECS action of a kernel response record.
pub fn response_action(signal: u32, flags: u32) -> Action {
    let freeze = flags & r::FREEZE != 0;
    match (signal, flags & r::KILL != 0, freeze) {
        (0, true, _) => Action::WouldKill,
        (0, false, true) => Action::WouldFreeze,
        (0, false, false) => Action::WouldStop,
        (_, true, _) => Action::Kill,
        (_, false, true) => Action::Freeze,
        _ => Action::Stop,
    }
}

pub fn class_name(class: u32) -> &'static str {
    r::NAMES
        .iter()
        .find(|(b, _)| *b == class)
        .map(|(_, n)| *n)
        .unwrap_or("unknown")
}

pub fn signal_name(sig: u32) -> &'static str {
    match sig {
        9 => "SIGKILL",
        19 => "SIGSTOP",
        0 => "none",
        _ => "other",
    }
}
