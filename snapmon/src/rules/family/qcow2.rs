//! Rules stage, qcow2 family (SM-Q001–Q005): metadata, snapshot table, snapshot count, backing file
//! and header of a qcow2 image changed by whoever may not.

use crate::rules::{
    ctx::{
        Ctx, Hit,
        Kind::{Ioctl, Rename, Write},
    },
    def::RuleDef,
    helpers::{
        actor, by_target, changes, cls, diff_text, has_fact, has_image_ext, how, ioctl_is,
        ioctl_name, known_qcow2, leaf, leaf_bytes, path_bytes, subject_leaf, verb,
    },
};
use crate::{
    classify::Format,
    event::{Action, Event},
    record::Severity,
};

pub const Q001: RuleDef = RuleDef {
    id: "SM-Q001",
    name: "qcow2 metadata modified by a non-QEMU process",
    severity: Severity::High,
    technique: &["T1565.001"],
    kinds: &[Write, Ioctl, Rename],
    rate: None,
    windowed: false,
    default_window: 0,
    default_enabled: true,
    supersedes: &[],
    eval: q001,
    summary: "header, snapshot table, L1/L2, refcount or bitmap of a qcow2 image written, truncated, punched, cloned over, mapped shared-writable or replaced by a rename by an executable that is not a trusted `qemu` actor; info when a trusted QEMU debug tool (`qemu-io`) writes it",
};

pub const Q002: RuleDef = RuleDef {
    id: "SM-Q002",
    name: "qcow2 snapshots hidden",
    severity: Severity::Critical,
    technique: &["T1490", "T1564"],
    kinds: &[Write, Rename],
    rate: None,
    windowed: false,
    default_window: 0,
    default_enabled: true,
    supersedes: &["SM-Q001"],
    eval: q002,
    summary: "nb_snapshots drops without a snapshot delete by a trusted `qemu` actor; cites an earlier snapshot-table write to the same file as related",
};

pub const Q003: RuleDef = RuleDef {
    id: "SM-Q003",
    name: "qcow2 snapshot table rewritten",
    severity: Severity::High,
    technique: &["T1490"],
    kinds: &[Write, Rename],
    rate: None,
    windowed: false,
    default_window: 0,
    default_enabled: true,
    supersedes: &["SM-Q001"],
    eval: q003,
    summary: "snapshot table entries or the snapshots_offset pointer written by a non-`qemu` actor",
};

pub const Q004: RuleDef = RuleDef {
    id: "SM-Q004",
    name: "qcow2 backing file redirected",
    severity: Severity::High,
    technique: &["T1565.001"],
    kinds: &[Write, Rename],
    rate: None,
    windowed: false,
    default_window: 0,
    default_enabled: true,
    supersedes: &["SM-Q001"],
    eval: q004,
    summary: "backing file name/offset/format changed by a non-`qemu` actor (critical when it points into a volatile path); a trusted rebase into a volatile path is low",
};

pub const Q005: RuleDef = RuleDef {
    id: "SM-Q005",
    name: "qcow2 header destroyed",
    severity: Severity::Critical,
    technique: &["T1486", "T1485"],
    kinds: &[Write, Rename],
    rate: None,
    windowed: false,
    default_window: 0,
    default_enabled: true,
    supersedes: &["SM-Q001"],
    eval: q005,
    summary: "qcow2 magic changed, the header punched/zeroed, or the header overwritten with high-entropy bytes (classification.sample_entropy ≥ 6.5), by any actor",
};

fn q001(ctx: &mut Ctx) -> Option<Hit> {
    let ev = ctx.ev;
    if ctx.trust.by("qemu") {
        // A QEMU debugging tool on a production image: its writes go through the qcow2
        // driver (consistent), but someone is poking at the image. A note, not an alarm.
        let tool = ctx.trust.qemu_tool.filter(|t| t.is_debug())?;
        if !is_qcow2(ctx) || !has_meta_region(ev) || ctx.quiet() {
            return None;
        }
        let regions = meta_regions(ev);
        return Some(Hit {
            message: format!(
                "{} {} qcow2 metadata ({}) in {} through the QEMU block layer ({} is a QEMU \
                 debugging tool)",
                actor(ev),
                verb(ev.action),
                regions.join(", "),
                leaf(ev),
                tool.name(),
            ),
            severity: Some(Severity::Info),
            ..Default::default()
        });
    }
    if ev.action == Action::Ioctl {
        // FICLONE/FICLONERANGE/FIDEDUPERANGE replace the image's blocks wholesale.
        let n = ioctl_name(ev);
        let clones = ["FICLONE", "FICLONERANGE", "FIDEDUPERANGE"]
            .iter()
            .any(|c| ioctl_is(n, c));
        let named = has_image_ext(leaf_bytes(path_bytes(ev)), &ctx.det.image_extensions);
        if !clones || !(is_qcow2(ctx) || named) || became(ev) {
            return None;
        }
        return Some(Hit::msg(format!(
            "{} cloned another file over qcow2 image {} ({})",
            actor(ev),
            leaf(ev),
            n
        )));
    }
    if !is_qcow2(ctx) || became(ev) {
        return None;
    }
    // Truncating a known image to nothing has no region left to name.
    if !has_meta_region(ev) && (ev.action != Action::OpenTruncate) {
        return None;
    }
    // A repeat (the common case under load) needs no message: name the regions after.
    if ctx.quiet() {
        return Some(Hit::default());
    }
    let regions = meta_regions(ev);
    let what = if regions.is_empty() {
        "everything".to_string()
    } else {
        regions.join(", ")
    };
    let d = diff_text(changes(ev, |_| true));
    let d = if d.is_empty() {
        String::new()
    } else {
        format!(": {d}")
    };
    if by_target(ev) {
        return Some(Hit::msg(format!(
            "{} replaced qcow2 image {}{}{d}",
            actor(ev),
            subject_leaf(ev),
            how(ev)
        )));
    }
    Some(Hit::msg(format!(
        "{} {} qcow2 metadata ({what}) in {}{d}",
        actor(ev),
        verb(ev.action),
        leaf(ev),
    )))
}

fn q002(ctx: &mut Ctx) -> Option<Hit> {
    let ev = ctx.ev;
    let c = changes(ev, |f| f == "nb_snapshots").next()?;
    let (b, a) = (c.before.parse::<u64>().ok()?, c.after.parse::<u64>().ok()?);
    if a >= b || ctx.trust.by("qemu") {
        return None;
    }
    let hidden: Vec<&str> = changes(ev, |f| f == "snapshot_removed")
        .map(|c| c.before.as_str())
        .collect();
    let f = ev.file.as_ref()?;
    let mut h = Hit::msg(format!(
        "{} set nb_snapshots {b}→{a} in {}{}{}",
        actor(ev),
        subject_leaf(ev),
        how(ev),
        hidden_list(&hidden)
    ));
    // Sequence: the table was rewritten first, then the count dropped.
    if let Some(&(seq, ts)) = ctx.st.table_writes.get(&(f.dev, f.ino)) {
        if ev.ts_unix_ns - ts <= 600_000_000_000 && seq != ev.seq {
            h.related.push(seq);
            h.message.push_str(" after rewriting its snapshot table");
        }
    }
    Some(h)
}

/// Snapshots a message names at most (a table holds up to 65536); the rest are counted.
const HIDDEN_NAMED: usize = 64;

/// ` (hides a, b, c)`: every hidden snapshot, up to HIDDEN_NAMED, then how many more.
fn hidden_list(hidden: &[&str]) -> String {
    if hidden.is_empty() {
        return String::new();
    }
    let named = hidden[..hidden.len().min(HIDDEN_NAMED)].join(", ");
    match hidden.len().saturating_sub(HIDDEN_NAMED) {
        0 => format!(" (hides {named})"),
        more => format!(" (hides {named} and {more} more)"),
    }
}

fn q003(ctx: &mut Ctx) -> Option<Hit> {
    if ctx.trust.by("qemu") || !is_qcow2(ctx) || became(ctx.ev) {
        return None;
    }
    let ev = ctx.ev;
    let table = cls(ev).is_some_and(|c| c.regions.iter().any(|r| r == "snapshot_table"));
    let ptr: Vec<_> = changes(ev, |f| f == "snapshots_offset").collect();
    if !table && ptr.is_empty() {
        return None;
    }
    let d = diff_text(ptr.into_iter());
    Some(Hit::msg(if d.is_empty() {
        format!(
            "{} {} snapshot table entries in {}",
            actor(ev),
            verb(ev.action),
            leaf(ev)
        )
    } else {
        format!(
            "{} moved the snapshot table pointer in {}{}: {d}",
            actor(ev),
            subject_leaf(ev),
            how(ev)
        )
    }))
}

fn q004(ctx: &mut Ctx) -> Option<Hit> {
    let ev = ctx.ev;
    let backing =
        |f: &str| f.starts_with("backing_file") || f == "backing_format" || f == "backing_name";
    let ch: Vec<_> = changes(ev, backing).collect();
    let region = cls(ev).is_some_and(|c| {
        c.regions
            .iter()
            .any(|r| r == "backing_name" || r == "header.extension.backing_format")
    });
    // A new image's backing file is set, not redirected.
    if (ch.is_empty() && !region) || became(ev) {
        return None;
    }
    let new = ch
        .iter()
        .find(|c| c.field == "backing_file")
        .map(|c| c.after.clone())
        .unwrap_or_default();
    let volatile = !new.is_empty() && ctx.det.volatile.iter().any(|g| g.matches(new.as_bytes()));
    let trusted = ctx.trust.by("qemu");
    if trusted && !volatile {
        return None;
    }
    let d = diff_text(
        ch.iter()
            .copied()
            .filter(|c| c.field == "backing_file")
            .chain(ch.iter().copied().filter(|c| c.field != "backing_file")),
    );
    let mut h = Hit::msg(format!(
        "{} redirected the backing file of {}{}{}{}",
        actor(ev),
        subject_leaf(ev),
        how(ev),
        if d.is_empty() {
            String::new()
        } else {
            format!(": {d}")
        },
        if volatile {
            " (volatile, world-writable location)"
        } else {
            ""
        }
    ));
    h.severity = Some(match (trusted, volatile) {
        (true, _) => Severity::Low,
        (false, true) => Severity::Critical,
        (false, false) => Severity::High,
    });
    Some(h)
}

/// Header entropy above which a write is treated as random/encrypted bytes.
pub const HIGH_ENTROPY: f64 = 6.5;

fn q005(ctx: &mut Ctx) -> Option<Hit> {
    if !is_qcow2(ctx) || became(ctx.ev) {
        return None;
    }
    let ev = ctx.ev;
    let c = cls(ev)?;
    let magic = changes(ev, |f| f == "magic").next();
    let touches_magic = c.regions.iter().any(|r| r == "header.magic");
    let entropy = c
        .sample_entropy
        .filter(|e| *e >= HIGH_ENTROPY && c.regions.iter().any(|r| r.starts_with("header")));
    // Truncation counts only when the new length cuts into the header (growing is creation).
    let cut_header = match ev.action {
        // `qemu-img create` over an existing image truncates it first: legitimate.
        Action::Truncate | Action::OpenTruncate if ctx.trust.by("qemu") => false,
        Action::Truncate => ev.write.as_ref().is_some_and(|w| w.length < 104),
        Action::OpenTruncate => true,
        a => is_destructive_op(a),
    };
    let wiped = touches_magic && cut_header;
    if magic.is_none() && entropy.is_none() && !wiped {
        return None;
    }
    let mut parts = Vec::new();
    if let Some(m) = magic {
        parts.push(format!("magic {}→{}", m.before, m.after));
    }
    if let Some(e) = entropy {
        parts.push(format!("{e:.2} bits/byte"));
    }
    if wiped && magic.is_none() {
        parts.push(format!("{} over the header", ev.action));
    }
    Some(Hit::msg(format!(
        "{} destroyed the qcow2 header of {}{} ({})",
        actor(ev),
        subject_leaf(ev),
        how(ev),
        parts.join(", ")
    )))
}

/// The file is being made, not modified: it became an image on this event (fact
/// `became`), or its creator is filling it (fact `made`: cp, a template copy).
fn became(ev: &Event) -> bool {
    cls(ev).is_some_and(|c| has_fact(c, "became") || has_fact(c, "made"))
}

/// A qcow2 image: by this event's content, or an identity already seen holding one.
fn is_qcow2(ctx: &Ctx) -> bool {
    cls(ctx.ev).is_some_and(|c| c.format == Format::Qcow2) || known_qcow2(ctx)
}

/// The metadata regions written, the header's fields as one `header`; data is not metadata.
fn meta_regions(ev: &Event) -> Vec<&str> {
    let mut v: Vec<&str> = Vec::new();
    for r in cls(ev).into_iter().flat_map(|c| c.regions.iter()) {
        if r == "data" {
            continue;
        }
        let top = if r.starts_with("header") {
            "header"
        } else {
            r.as_str()
        };
        if !v.contains(&top) {
            v.push(top);
        }
    }
    v
}

/// Whether `meta_regions` is non-empty, without collecting it.
fn has_meta_region(ev: &Event) -> bool {
    cls(ev)
        .into_iter()
        .flat_map(|c| c.regions.iter())
        .any(|r| r != "data")
}

/// Cuts, punches or shifts what was there.
fn is_destructive_op(action: Action) -> bool {
    use Action as A;
    match action {
        A::PunchHole
        | A::ZeroRange
        | A::CollapseRange
        | A::InsertRange
        | A::Truncate
        | A::OpenTruncate => true,
        A::Write
        | A::Pwrite64
        | A::Writev
        | A::Pwritev
        | A::Pwritev2
        | A::IoUringWrite
        | A::IoUringWritev
        | A::IoUringWriteFixed
        | A::AioPwrite
        | A::AioPwritev
        | A::CopyFileRange
        | A::Splice
        | A::Sendfile
        | A::MmapSharedWrite
        | A::VfsWrite
        | A::WriteUnknown
        | A::Fallocate
        | A::CloneRange
        | A::Create
        | A::OpenWrite
        | A::Rename
        | A::Unlink
        | A::Rmdir
        | A::Link
        | A::Symlink
        | A::Mkdir
        | A::Chmod
        | A::Chown
        | A::Utimes
        | A::NamespaceUnknown
        | A::Ioctl
        | A::IoUringRegisterFiles
        | A::Blinded
        | A::LoopDetached
        | A::Fork
        | A::Exec
        | A::Exit
        | A::Unset
        | A::DenyWrite
        | A::DenyOpenWrite
        | A::DenyTruncate
        | A::DenyUnlink
        | A::DenyRename
        | A::DenyLink
        | A::DenyMmapWrite
        | A::DenyIoctl
        | A::DenyUnknown
        | A::WouldDenyWrite
        | A::WouldDenyOpenWrite
        | A::WouldDenyTruncate
        | A::WouldDenyUnlink
        | A::WouldDenyRename
        | A::WouldDenyLink
        | A::WouldDenyMmapWrite
        | A::WouldDenyIoctl
        | A::Kill
        | A::Stop
        | A::Freeze
        | A::WouldKill
        | A::WouldStop
        | A::WouldFreeze => false,
    }
}
