//! Rules stage, blinding (SM-A001, SM-U001): records about watched files lost, and watched files
//! put where their writes are no longer seen one by one.

use crate::rules::{
    ctx::{
        Ctx, Hit,
        Kind::{Loss, Register},
    },
    def::RuleDef,
    helpers::{about_snapshot_file, actor, leaf, process_name},
};
use crate::{
    event::{Action, DetailKey},
    record::Severity,
};

pub const A001: RuleDef = RuleDef {
    id: "SM-A001",
    name: "monitoring blinded",
    severity: Severity::High,
    technique: &["T1562.001"],
    kinds: &[Loss],
    rate: None,
    windowed: false,
    default_window: 0,
    default_enabled: true,
    supersedes: &[],
    eval: a001,
    summary: "the kernel dropped records about a watched image or metadata file because both ring-buffer lanes were full (a flood): whatever those records said went unjudged; names the last such file and its actor. Also when path records in a watched store were dropped and a watched image or metadata file of that store is no longer at its name (a delete or rename went unheard): names that file and the last dropper. Also when the fanotify route's event queue overflowed: names made in a store through another name of it may have gone unseen; names the directory the flood was in and its last actor",
};

pub const U001: RuleDef = RuleDef {
    id: "SM-U001",
    name: "watched image registered as an io_uring fixed file by an untrusted process",
    severity: Severity::Medium,
    technique: &["T1562.001", "T1565.001"],
    kinds: &[Register],
    rate: None,
    windowed: false,
    default_window: 0,
    default_enabled: true,
    supersedes: &[],
    eval: u001,
    summary: "a disk image or snapshot metadata file put into an io_uring registered-file table (`io_uring_register` files opcodes) by a process no actor group trusts: the ring's writes to it then name a table slot (`IOSQE_FIXED_FILE`) and, where the submit hook cannot read the ring's file table (the probe-read walk, 6.1) and the VFS hook is refused, are counted as lost rather than judged one by one; info when a trusted QEMU debugging tool (`qemu-io`) does it, nothing for the rest of the `qemu` group (QEMU with `aio=io_uring` registers its images)",
};

/// SM-A001: the agent's own `blinded` event (`Pipeline::blinded`): records about an image or
/// metadata file were dropped, so a tamper of it may have gone unseen.
fn a001(ctx: &mut Ctx) -> Option<Hit> {
    let ev = ctx.ev;
    if ev.action != Action::Blinded {
        return None;
    }
    let dropped = ev.detail_value(DetailKey::Dropped).unwrap_or("some");
    let file = match ev.file.as_ref() {
        Some(f) if f.path.is_none() => {
            format!("{}:{}", crate::paths::dev_display(f.dev), f.ino)
        }
        _ => leaf(ev),
    };
    let p = &ev.process;
    if ev.detail_value(DetailKey::DroppedRecord) == Some(crate::event::DROPPED_FANOTIFY) {
        // Which names were lost the kernel does not say: the directory is where the flood
        // was, and an actor only when an event there was read.
        let place = match ev.file.as_ref().and_then(|f| f.path.as_ref()) {
            Some(d) => format!(
                "{} (and any other marked directory)",
                crate::event::escape_bytes(&d.0)
            ),
            None => "the marked directories".into(),
        };
        let last = if p.pid == 0 {
            String::new()
        } else {
            format!(
                "; last actor {} uid {} pid {}",
                process_name(p),
                p.uid,
                p.pid
            )
        };
        return Some(Hit::msg(format!(
            "namespace events lost on the fanotify route in {place} (its event queue \
             was full: {dropped} overflows and events dropped{last}): a name renamed or made in a store through a \
             symlink or bind mount may be hidden"
        )));
    }
    if ev.detail_value(DetailKey::DroppedRecord) == Some(crate::event::DROPPED_PATH) {
        return Some(Hit::msg(format!(
            "{file} went from its store unheard while the ring buffer was full ({dropped} \
             records naming paths in watched stores dropped; last actor {} uid {} pid {}): \
             a delete or rename of it may be hidden",
            process_name(p),
            p.uid,
            p.pid
        )));
    }
    Some(Hit::msg(format!(
        "events lost on {file} while the ring buffer was full ({dropped} records about images or \
         metadata dropped; last actor {} uid {} pid {}): tampering may be hidden",
        process_name(p),
        p.uid,
        p.pid
    )))
}

/// SM-U001: a watched image or metadata file registered as an io_uring fixed file.
fn u001(ctx: &mut Ctx) -> Option<Hit> {
    let ev = ctx.ev;
    if ev.action != Action::IoUringRegisterFiles {
        return None;
    }
    if !about_snapshot_file(ctx) {
        return None;
    }
    let slot = ev.detail_value(DetailKey::IoUringSlot).unwrap_or("?");
    if ctx.trust.by("qemu") {
        // QEMU with aio=io_uring registers its images; a debugging tool doing it is a note.
        let tool = ctx.trust.qemu_tool.filter(|t| t.is_debug())?;
        return Some(Hit {
            message: format!(
                "{} registered {} as an io_uring fixed file (slot {slot}; {} is a QEMU \
                 debugging tool)",
                actor(ev),
                leaf(ev),
                tool.name()
            ),
            severity: Some(Severity::Info),
            ..Default::default()
        });
    }
    if ctx.trust.any() {
        return None;
    }
    Some(Hit::msg(format!(
        "{} registered {} as an io_uring fixed file (slot {slot}): its writes through the \
         ring name the slot, not the file",
        actor(ev),
        leaf(ev)
    )))
}
