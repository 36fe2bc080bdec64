//! Rules stage, kernel snapshot facilities (SM-K001–K006): device-mapper, btrfs, ZFS, filesystem
//! freeze and loop-device ioctls by untrusted processes, and qemu-nbd serving an image for one.

use crate::rules::{
    ctx::{
        Ctx, Hit,
        Kind::{Ioctl, Open},
    },
    def::RuleDef,
    helpers::{actor, cls, ioctl_is, ioctl_name, leaf, path_bytes},
    qemu_tools::{self, Tool},
};
use crate::{
    event::{DetailKey, Event},
    record::Severity,
};

pub const K001: RuleDef = RuleDef {
    id: "SM-K001",
    name: "device-mapper snapshot operation by an untrusted process",
    severity: Severity::High,
    technique: &["T1490"],
    kinds: &[Ioctl],
    rate: None,
    windowed: false,
    default_window: 0,
    default_enabled: true,
    supersedes: &[],
    eval: k001,
    summary: "DM_TABLE_LOAD of snapshot/thin targets, DM_TARGET_MSG, or a destructive dm ioctl by a non-`lvm` actor",
};

pub const K002: RuleDef = RuleDef {
    id: "SM-K002",
    name: "btrfs snapshot unprotected or destroyed by an untrusted process",
    severity: Severity::High,
    technique: &["T1490"],
    kinds: &[Ioctl],
    rate: None,
    windowed: false,
    default_window: 0,
    default_enabled: true,
    supersedes: &[],
    eval: k002,
    summary: "btrfs read-only flag cleared or SNAP_DESTROY by a non-`btrfs` actor",
};

pub const K003: RuleDef = RuleDef {
    id: "SM-K003",
    name: "ZFS snapshot destroyed or rolled back by an untrusted process",
    severity: Severity::High,
    technique: &["T1490"],
    kinds: &[Ioctl],
    rate: None,
    windowed: false,
    default_window: 0,
    default_enabled: true,
    supersedes: &[],
    eval: k003,
    summary: "ZFS destructive ioctls (destroy, rollback, …) by a non-`zfs` actor",
};

pub const K004: RuleDef = RuleDef {
    id: "SM-K004",
    name: "filesystem frozen and not thawed",
    severity: Severity::Medium,
    technique: &["T1490"],
    kinds: &[Ioctl],
    rate: None,
    windowed: true,
    default_window: 20,
    default_enabled: true,
    supersedes: &[],
    eval: k004,
    summary: "FIFREEZE by a non-`freeze` actor with no FITHAW of the same filesystem within `window_seconds` (reported at the next event or tick after the deadline)",
};

pub const K005: RuleDef = RuleDef {
    id: "SM-K005",
    name: "watched image attached to a loop device by an untrusted process",
    severity: Severity::Medium,
    technique: &["T1006"],
    kinds: &[Ioctl],
    rate: None,
    windowed: false,
    default_window: 0,
    default_enabled: true,
    supersedes: &[],
    eval: k005,
    summary: "LOOP_SET_FD, LOOP_CONFIGURE or LOOP_CHANGE_FD with a watched file as the backing file, by a non-`loop` actor: the image's bytes become writable as a block device (its writes are then watched and judged as the image's, whoever attached it)",
};

pub const K006: RuleDef = RuleDef {
    id: "SM-K006",
    name: "watched image served writable by qemu-nbd for an untrusted process",
    severity: Severity::Medium,
    technique: &["T1006"],
    kinds: &[Open],
    rate: None,
    windowed: false,
    default_window: 0,
    default_enabled: true,
    supersedes: &[],
    eval: k006,
    summary: "qemu-nbd opens a watched file for writing (`-c /dev/nbdN`, or an export on a socket or port) and the `nbd` actor group does not trust it (default: started by libvirt's daemons): its clients' writes reach the image as qemu-nbd's, a trusted `qemu` writer whose data writes are not judged",
};

fn k001(ctx: &mut Ctx) -> Option<Hit> {
    let ev = ctx.ev;
    let c = cls(ev)?;
    if ioctl_family(ev) != "dm" || ctx.trust.by("lvm") {
        return None;
    }
    let n = ioctl_name(ev);
    let snapshot_table =
        n.starts_with("DM_TABLE_LOAD") && (n.contains("[snapshot") || n.contains("[thin"));
    if !(snapshot_table
        || n.starts_with("DM_TARGET_MSG")
        || c.snapshot_destructive
        || c.snapshot_create)
    {
        return None;
    }
    Some(Hit::msg(format!(
        "{} issued {n} on {}",
        actor(ev),
        leaf(ev)
    )))
}

fn k002(ctx: &mut Ctx) -> Option<Hit> {
    let ev = ctx.ev;
    let c = cls(ev)?;
    if ioctl_family(ev) != "btrfs" || !c.snapshot_destructive || ctx.trust.by("btrfs") {
        return None;
    }
    let n = ioctl_name(ev);
    let what = if n.contains("readonly=cleared") {
        "cleared the read-only flag of"
    } else {
        "destroyed a snapshot in"
    };
    Some(Hit::msg(format!(
        "{} {what} {} ({n})",
        actor(ev),
        String::from_utf8_lossy(path_bytes(ev))
    )))
}

fn k003(ctx: &mut Ctx) -> Option<Hit> {
    let ev = ctx.ev;
    let c = cls(ev)?;
    if ioctl_family(ev) != "zfs" || !c.snapshot_destructive || ctx.trust.by("zfs") {
        return None;
    }
    Some(Hit::msg(format!("{} issued {}", actor(ev), ioctl_name(ev))))
}

fn k004(ctx: &mut Ctx) -> Option<Hit> {
    let ev = ctx.ev;
    let n = ioctl_name(ev);
    let f = ev.file.as_ref()?;
    let key = (f.dev, f.ino);
    if ioctl_is(n, "FITHAW") {
        ctx.st.freezes.remove(&key);
    } else if ioctl_is(n, "FIFREEZE") && !ctx.trust.by("freeze") {
        ctx.st.freezes.insert(key, Box::new(ev.clone()));
    }
    // Firing happens in the engine's timer pass (Engine::expire).
    None
}

fn k005(ctx: &mut Ctx) -> Option<Hit> {
    let ev = ctx.ev;
    if ioctl_family(ev) != "loop" || ctx.trust.by("loop") {
        return None;
    }
    // Only the attach reported for its watched backing file, not ioctls on the device.
    let backing = ev.detail_value(DetailKey::LoopRole) == Some("backing");
    if !backing {
        return None;
    }
    let dev = ev
        .detail_value(DetailKey::LoopDevice)
        .unwrap_or("a loop device");
    Some(Hit::msg(format!(
        "{} attached {} to {dev} ({})",
        actor(ev),
        String::from_utf8_lossy(path_bytes(ev)),
        ioctl_name(ev)
    )))
}

fn k006(ctx: &mut Ctx) -> Option<Hit> {
    let ev = ctx.ev;
    if ctx.trust.block_tool != Some(Tool::QemuNbd) || ctx.trust.by("nbd") || ev.file.is_none() {
        return None;
    }
    let args: Vec<&[u8]> = ev.process.args.iter().map(|a| a.0.as_slice()).collect();
    let how = match qemu_tools::nbd_device(&args) {
        Some(dev) => format!("connected it to {dev}"),
        None => "exported it over NBD".into(),
    };
    Some(Hit::msg(format!(
        "{} opened {} for writing and {how}: its clients write the image as a trusted qemu writer",
        actor(ev),
        String::from_utf8_lossy(path_bytes(ev)),
    )))
}

/// The message for a freeze that was not undone in time.
pub fn k004_message(ev: &Event, window_s: u64) -> String {
    format!(
        "{} froze {} and did not thaw it within {window_s} s",
        actor(ev),
        String::from_utf8_lossy(path_bytes(ev))
    )
}

/// The facility an ioctl belongs to (`dm`, `btrfs`, `zfs`, `loop`), else the file's format.
fn ioctl_family(ev: &Event) -> &str {
    cls(ev)
        .and_then(|c| c.ioctl.as_ref())
        .and_then(|v| v.get("family"))
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| cls(ev).map(|c| c.format.as_str()).unwrap_or(""))
}
