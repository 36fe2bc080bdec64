//! Rules stage, registry: the default rule set. Each rule has a stable id, a name, a default
//! severity, its ATT&CK techniques, the event kinds it looks at (the engine's index) and a
//! pure evaluation over the event, the actor's trust and bounded state.

use crate::event::Action;

use super::{Ctx, Hit, Kind};
use crate::{classify::Format, event::Event, record::Severity};

pub struct RuleDef {
    pub id: &'static str,
    pub name: &'static str,
    pub severity: Severity,
    pub technique: &'static [&'static str],
    pub kinds: &'static [Kind],
    /// Rate rules: default (threshold, window seconds).
    pub rate: Option<(u32, u64)>,
    /// Sequence rules with a timeout: default window seconds.
    pub windowed: bool,
    pub default_window: u64,
    pub default_enabled: bool,
    /// When this rule fires on an event, these (less specific) rules are dropped for it.
    pub supersedes: &'static [&'static str],
    pub eval: fn(&mut Ctx) -> Option<Hit>,
    /// What the rule watches, for docs/rules.md and `snapmon policy check`.
    pub summary: &'static str,
}

use Kind::*;

pub static RULES: &[RuleDef] = &[
    RuleDef {
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
    },
    RuleDef {
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
    },
    RuleDef {
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
    },
    RuleDef {
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
    },
    RuleDef {
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
    },
    RuleDef {
        id: "SM-R001",
        name: "mass rename of disk images",
        severity: Severity::Critical,
        technique: &["T1486"],
        kinds: &[Rename],
        rate: Some((5, 60)),
        windowed: false,
        default_window: 0,
        default_enabled: true,
        supersedes: &[],
        eval: r001,
        summary: "processes with one parent rename `threshold` disk images to a different extension within `window_seconds`",
    },
    RuleDef {
        id: "SM-R002",
        name: "ransom note dropped in a snapshot store",
        severity: Severity::High,
        technique: &["T1486"],
        kinds: &[Create, Rename],
        rate: None,
        windowed: false,
        default_window: 0,
        default_enabled: true,
        supersedes: &[],
        eval: r002,
        summary: "a file whose name matches `detection.ransom_note_names` is created or renamed into a watched store",
    },
    RuleDef {
        id: "SM-H001",
        name: "hidden file planted in a snapshot store",
        severity: Severity::Medium,
        technique: &["T1564.001"],
        kinds: &[Create, Rename],
        rate: None,
        windowed: false,
        default_window: 0,
        default_enabled: true,
        supersedes: &[],
        eval: h001,
        summary: "dot-file, trailing space or dot, control characters, or a `detection.hidden_extensions` extension, created by a process no actor group trusts",
    },
    RuleDef {
        id: "SM-H002",
        name: "qcow2 image disguised by name or place",
        severity: Severity::High,
        technique: &["T1036.008", "T1564"],
        kinds: &[Write],
        rate: None,
        windowed: false,
        default_window: 0,
        default_enabled: true,
        supersedes: &[],
        eval: h002,
        summary: "a file with qcow2 magic whose extension is not an image extension, or that lives in libvirt or LVM metadata directories (once per file)",
    },
    RuleDef {
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
    },
    RuleDef {
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
    },
    RuleDef {
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
        summary: "/etc/lvm/{backup,archive} files, a PV label or metadata area written by a non-`lvm` actor",
    },
    RuleDef {
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
    },
    RuleDef {
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
    },
    RuleDef {
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
    },
    RuleDef {
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
    },
    RuleDef {
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
    },
    RuleDef {
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
    },
    RuleDef {
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
    },
    RuleDef {
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
    },
    RuleDef {
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
        summary: "the kernel dropped records about a watched image or metadata file because both ring-buffer lanes were full (a flood): whatever those records said went unjudged; names the last such file and its actor",
    },
    RuleDef {
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
        summary: "a disk image or snapshot metadata file put into an io_uring registered-file table (`io_uring_register` files opcodes) by a process no actor group trusts: the ring's writes to it then name a table slot (`IOSQE_FIXED_FILE`) and, on the tracepoint backend, are counted as lost rather than judged one by one; info when a trusted QEMU debugging tool (`qemu-io`) does it, nothing for the rest of the `qemu` group (QEMU with `aio=io_uring` registers its images)",
    },
];

pub fn find(id: &str) -> Option<&'static RuleDef> {
    RULES.iter().find(|r| r.id == id)
}

// ---------------------------------------------------------------------------------------
// Helpers.

fn cls(ev: &Event) -> Option<&crate::classify::Classification> {
    ev.classification.as_ref()
}

fn leaf(ev: &Event) -> String {
    ev.file
        .as_ref()
        .and_then(|f| f.path.as_ref())
        .map(|p| {
            let b = &p.0;
            let start = b
                .iter()
                .rposition(|&c| c == b'/')
                .map(|i| i + 1)
                .unwrap_or(0);
            crate::event::escape_bytes(&b[start..])
        })
        .unwrap_or_else(|| "?".into())
}

fn target_leaf(ev: &Event) -> Option<String> {
    let p = ev.target.as_ref()?.path.as_ref()?;
    let b = &p.0;
    let start = b
        .iter()
        .rposition(|&c| c == b'/')
        .map(|i| i + 1)
        .unwrap_or(0);
    Some(crate::event::escape_bytes(&b[start..]))
}

/// A rename or link judged by what it put at its target (classification fact `incoming`):
/// the target is what the finding is about.
fn by_target(ev: &Event) -> bool {
    matches!(ev.action, Action::Rename | Action::Link)
        && cls(ev).is_some_and(|c| c.facts.iter().any(|f| f.0 == "incoming"))
}

/// The file a finding is about: the target of a replace, else the event's file.
fn subject_path(ev: &Event) -> &[u8] {
    if by_target(ev) {
        if let Some(p) = ev.target.as_ref().and_then(|t| t.path.as_ref()) {
            return &p.0;
        }
    }
    path_bytes(ev)
}

fn subject_leaf(ev: &Event) -> String {
    crate::event::escape_bytes(leaf_bytes(subject_path(ev)))
}

/// The file is being made, not modified: it became an image on this event (fact
/// `became`), or its creator is filling it (fact `made`: cp, a template copy).
fn became(ev: &Event) -> bool {
    cls(ev).is_some_and(|c| c.facts.iter().any(|f| f.0 == "became" || f.0 == "made"))
}

/// ` by renaming X over it` for a replace, else nothing.
fn how(ev: &Event) -> String {
    if !by_target(ev) {
        return String::new();
    }
    let src = crate::event::escape_bytes(leaf_bytes(path_bytes(ev)));
    let replaced = cls(ev).is_some_and(|c| c.facts.iter().any(|f| f.0 == "replaced"));
    match (ev.action, replaced) {
        (Action::Link, _) => format!(" by linking {src} there"),
        (_, true) => format!(" by renaming {src} over it"),
        _ => format!(" by renaming {src} there"),
    }
}

fn path_bytes(ev: &Event) -> &[u8] {
    ev.file
        .as_ref()
        .and_then(|f| f.path.as_ref())
        .map(|p| p.0.as_slice())
        .unwrap_or(b"")
}

fn dir_of(p: &[u8]) -> String {
    let end = p.iter().rposition(|&c| c == b'/').unwrap_or(0);
    crate::event::escape_bytes(&p[..end.max(1).min(p.len())])
}

/// How a message names a process: `memfd:NAME` for a program run from a memfd, `PATH
/// (deleted)` for one whose file is gone, else its name.
pub fn process_name(p: &crate::event::ProcessInfo) -> String {
    let exe = p.executable.display();
    if let Some(m) = exe.strip_prefix("/memfd:") {
        return format!("memfd:{}", m.strip_suffix(" (deleted)").unwrap_or(m));
    }
    if exe.ends_with(" (deleted)") {
        return exe;
    }
    if p.name.is_empty() {
        format!("pid {}", p.pid)
    } else {
        p.name.clone()
    }
}

/// `python3 (← bash ← sshd)`: the actor and up to three ancestors.
pub fn actor(ev: &Event) -> String {
    let p = &ev.process;
    let name = process_name(p);
    if p.ancestors.is_empty() {
        return name;
    }
    let mut s = format!("{name} (");
    for a in p.ancestors.iter().take(3) {
        s.push_str("← ");
        s.push_str(&a.name);
        s.push(' ');
    }
    if p.ancestors.len() > 3 {
        s.push_str("← … ");
    }
    s.pop();
    s.push(')');
    s
}

fn changes<'a>(
    ev: &'a Event,
    pred: impl Fn(&str) -> bool + 'a,
) -> impl Iterator<Item = &'a crate::classify::Change> + 'a {
    cls(ev)
        .into_iter()
        .flat_map(|c| c.changes.iter())
        .filter(move |c| pred(&c.field))
}

fn diff_text<'a>(it: impl Iterator<Item = &'a crate::classify::Change>) -> String {
    it.take(4)
        .map(|c| {
            format!(
                "{} {}→{}",
                c.field,
                if c.before.is_empty() {
                    "∅"
                } else {
                    &c.before
                },
                if c.after.is_empty() { "∅" } else { &c.after }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_qcow2(ctx: &Ctx) -> bool {
    cls(ctx.ev).is_some_and(|c| c.format == Format::Qcow2)
        || ctx
            .ev
            .file
            .as_ref()
            .is_some_and(|f| ctx.st.known_qcow2.contains(&(f.dev, f.ino)))
}

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

fn verb(action: Action) -> &'static str {
    use Action as A;
    match action {
        A::Truncate | A::OpenTruncate => "truncated",
        A::PunchHole => "punched a hole in",
        A::ZeroRange => "zeroed a range of",
        A::CollapseRange | A::InsertRange => "shifted",
        A::MmapSharedWrite => "mapped shared-writable",
        A::CopyFileRange | A::Splice | A::Sendfile => "copied bytes over",
        A::Ioctl => "cloned another file over",
        A::CloneRange => "cloned blocks into",
        A::Rename => "replaced",
        A::Link => "linked",
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
        | A::VfsWrite
        | A::WriteUnknown
        | A::Fallocate
        | A::Create
        | A::OpenWrite
        | A::Unlink
        | A::Rmdir
        | A::Symlink
        | A::Mkdir
        | A::Chmod
        | A::Chown
        | A::Utimes
        | A::NamespaceUnknown
        | A::IoUringRegisterFiles
        | A::Blinded
        | A::LoopDetached
        | A::Fork
        | A::Exec
        | A::Exit
        | A::Unset
        // The write rules see LSM decisions too (`Kind::of`).
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
        | A::WouldFreeze => "wrote",
    }
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

fn ioctl_name(ev: &Event) -> &str {
    cls(ev).and_then(|c| c.ioctl_name.as_deref()).unwrap_or("")
}

fn ioctl_family(ev: &Event) -> &str {
    cls(ev)
        .and_then(|c| c.ioctl.as_ref())
        .and_then(|v| v.get("family"))
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| cls(ev).map(|c| c.format.as_str()).unwrap_or(""))
}

fn has_image_ext(name: &[u8], exts: &[String]) -> bool {
    let Some(dot) = name.iter().rposition(|&c| c == b'.') else {
        return false;
    };
    let ext = &name[dot + 1..];
    exts.iter().any(|e| e.as_bytes().eq_ignore_ascii_case(ext))
}

fn leaf_bytes(p: &[u8]) -> &[u8] {
    let start = p
        .iter()
        .rposition(|&c| c == b'/')
        .map(|i| i + 1)
        .unwrap_or(0);
    &p[start..]
}

// ---------------------------------------------------------------------------------------
// qcow2.

fn q001(ctx: &mut Ctx) -> Option<Hit> {
    let ev = ctx.ev;
    if ctx.trust.by("qemu") {
        // A QEMU debugging tool on a production image: its writes go through the qcow2
        // driver (consistent), but someone is poking at the image. A note, not an alarm.
        let tool = ctx.trust.qemu_tool.filter(|t| t.is_debug())?;
        let regions = meta_regions(ev);
        if !is_qcow2(ctx) || regions.is_empty() || ctx.quiet() {
            return None;
        }
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
            .any(|c| n == *c || n.starts_with(&format!("{c} ")));
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
    let regions = meta_regions(ev);
    // Truncating a known image to nothing has no region left to name.
    if regions.is_empty() && (ev.action != Action::OpenTruncate) {
        return None;
    }
    if ctx.quiet() {
        return Some(Hit::default());
    }
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

// ---------------------------------------------------------------------------------------
// Ransomware shapes and hiding.

fn r001(ctx: &mut Ctx) -> Option<Hit> {
    let ev = ctx.ev;
    let src = path_bytes(ev);
    let dst = ev.target.as_ref()?.path.as_ref()?.0.as_slice();
    let (sl, dl) = (leaf_bytes(src), leaf_bytes(dst));
    let exts = &ctx.det.image_extensions;
    // A cut name (the kernel's copy, unresolved) has lost its end: in a watched store it may
    // be an image's, and its extension may differ. Never judged as if whole.
    let (src_cut, dst_cut) = (ev.path_cut("file"), ev.path_cut("target"));
    if !src_cut && !has_image_ext(sl, exts) {
        return None;
    }
    let ext = |n: &[u8]| {
        n.iter()
            .rposition(|&c| c == b'.')
            .map(|i| n[i..].to_ascii_lowercase())
    };
    if !src_cut && !dst_cut && ext(sl) == ext(dl) {
        return None;
    }
    // Whatever a cut name was, renaming it to an image's name is not this shape.
    if src_cut && !dst_cut && has_image_ext(dl, exts) {
        return None;
    }
    let (threshold, window) = (ctx.threshold as usize, ctx.window_ns);
    let label = format!("{}→{}", leaf(ev), target_leaf(ev).unwrap_or_default());
    // Keyed by the parent: a shell loop runs one `mv` per file, a ransomware binary does all
    // of them itself; both share a parent.
    let key = ev
        .process
        .ancestors
        .first()
        .map(|a| a.pid)
        .unwrap_or(ev.process.pid);
    let rate = ctx.st.renames.entry_or(key, Default::default);
    if rate.add(ev.ts_unix_ns, window, ev.seq, label) < threshold {
        return None;
    }
    let labels = rate.labels();
    let seqs = rate.seqs();
    rate.clear();
    let mut h = Hit::msg(format!(
        "{} renamed {} disk images to new extensions within {} s ({}{})",
        actor(ev),
        labels.len(),
        window / 1_000_000_000,
        labels
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
        if labels.len() > 3 { ", …" } else { "" }
    ));
    h.related = seqs;
    Some(h)
}

fn new_name(ev: &Event) -> Option<&[u8]> {
    match ev.action {
        Action::Rename | Action::Link | Action::Symlink => {
            ev.target.as_ref()?.path.as_ref().map(|p| leaf_bytes(&p.0))
        }
        _ => Some(leaf_bytes(path_bytes(ev))),
    }
}

/// Is the new name only the start of one (cut, unresolved)? Then it is shown with an
/// ellipsis, and only its start can be judged.
fn new_name_cut(ev: &Event) -> bool {
    match ev.action {
        Action::Rename | Action::Link | Action::Symlink => ev.path_cut("target"),
        _ => ev.path_cut("file"),
    }
}

fn r002(ctx: &mut Ctx) -> Option<Hit> {
    let ev = ctx.ev;
    if new_name_cut(ev) {
        return None; // a glob on a whole name cannot judge its start
    }
    let name = new_name(ev)?;
    let g = ctx.det.ransom.iter().find(|g| g.matches(name))?;
    Some(Hit::msg(format!(
        "{} dropped a ransom-note-like file {} in {} (matches `{}`)",
        actor(ev),
        crate::event::escape_bytes(name),
        dir_of(path_bytes(ev)),
        g.as_str()
    )))
}

fn h001(ctx: &mut Ctx) -> Option<Hit> {
    let ev = ctx.ev;
    if ctx.trust.any() {
        return None;
    }
    let name = new_name(ev)?;
    // Of a cut name only the start is real: its end is the ellipsis.
    let cut = new_name_cut(ev);
    let seen = if cut {
        name.strip_suffix(crate::longpath::ELLIPSIS.as_bytes())
            .unwrap_or(name)
    } else {
        name
    };
    if seen.is_empty() {
        return None;
    }
    let why = if seen[0] == b'.' {
        "dot-file"
    } else if seen.iter().any(|&c| c < 0x20 || c == 0x7f) {
        "control characters in the name"
    } else if cut {
        return None;
    } else if name.ends_with(b" ") || name.ends_with(b".") {
        "trailing space or dot"
    } else if name.ends_with("\u{a0}".as_bytes())
        || name.windows(3).any(|w| w == "\u{200b}".as_bytes())
    {
        "invisible characters in the name"
    } else if ctx.det.hidden_extensions.iter().any(|e| {
        name.len() > e.len() + 1
            && name[name.len() - e.len() - 1] == b'.'
            && name[name.len() - e.len()..].eq_ignore_ascii_case(e.as_bytes())
    }) {
        "hidden extension"
    } else {
        return None;
    };
    Some(Hit::msg(format!(
        "{} created hidden file `{}` in {} ({why})",
        actor(ev),
        crate::event::escape_bytes(name),
        dir_of(match ev.action {
            Action::Rename | Action::Link | Action::Symlink => ev
                .target
                .as_ref()
                .and_then(|t| t.path.as_ref())
                .map(|p| p.0.as_slice())
                .unwrap_or(b""),
            _ => path_bytes(ev),
        })
    )))
}

fn h002(ctx: &mut Ctx) -> Option<Hit> {
    let ev = ctx.ev;
    if cls(ev).is_none_or(|c| c.format != Format::Qcow2) {
        return None;
    }
    let f = ev.file.as_ref()?;
    let p = path_bytes(ev);
    let name = leaf_bytes(p);
    let ps = String::from_utf8_lossy(p);
    let wrong_place = [
        "/etc/lvm/",
        "/libvirt/qemu/snapshot/",
        "/libvirt/qemu/checkpoint/",
    ]
    .iter()
    .any(|d| ps.contains(d));
    let wrong_name =
        !has_image_ext(name, &ctx.det.image_extensions) && !name.is_empty() && !ev.path_cut("file");
    if !wrong_place && !wrong_name {
        return None;
    }
    if ctx.st.disguised.contains(&(f.dev, f.ino)) {
        return None;
    }
    ctx.st.disguised.insert((f.dev, f.ino), ());
    Some(Hit::msg(format!(
        "{} wrote a qcow2 image disguised as {} in {} ({})",
        actor(ev),
        leaf(ev),
        dir_of(p),
        if wrong_place {
            "metadata directory"
        } else {
            "not an image extension"
        }
    )))
}

// ---------------------------------------------------------------------------------------
// Deletion bursts.

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
    if c.format == Format::Libvirt && ev.action == Action::Unlink {
        let fact = |k: &str| c.facts.iter().find(|f| f.0 == k).map(|f| f.1.clone());
        if fact("kind").as_deref() == Some("snapshot") && fact("temp").is_none() {
            out.push(fact("name").unwrap_or_else(|| leaf(ev)));
        }
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
    let labels = ctx.st.deletions.labels();
    let seqs = ctx.st.deletions.seqs();
    ctx.st.deletions.clear();
    let mut h = Hit::msg(format!(
        "{} snapshots deleted within {} s ({}{}), the last by {} in {}",
        labels.len(),
        ctx.window_ns / 1_000_000_000,
        labels
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
        if labels.len() > 5 { ", …" } else { "" },
        actor(ev),
        leaf(ev)
    ));
    h.related = seqs;
    Some(h)
}

// ---------------------------------------------------------------------------------------
// Tool metadata.

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
    let kind = c
        .facts
        .iter()
        .find(|f| f.0 == "kind")
        .map(|f| f.1.as_str())
        .unwrap_or("snapshot");
    let dom = c
        .facts
        .iter()
        .find(|f| f.0 == "domain")
        .map(|f| f.1.as_str())
        .unwrap_or("?");
    let replaced = c.facts.iter().any(|f| f.0 == "replaced");
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

// ---------------------------------------------------------------------------------------
// Kernel snapshot facilities.

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
    if n == "FITHAW" || n.starts_with("FITHAW ") {
        ctx.st.freezes.remove(&key);
    } else if (n == "FIFREEZE" || n.starts_with("FIFREEZE ")) && !ctx.trust.by("freeze") {
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
    let backing = ev
        .detail
        .iter()
        .any(|(k, v)| *k == "loop_role" && v == "backing");
    if !backing {
        return None;
    }
    let dev = ev
        .detail
        .iter()
        .find(|(k, _)| *k == "loop_device")
        .map(|(_, v)| v.as_str())
        .unwrap_or("a loop device");
    Some(Hit::msg(format!(
        "{} attached {} to {dev} ({})",
        actor(ev),
        String::from_utf8_lossy(path_bytes(ev)),
        ioctl_name(ev)
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

// ---------------------------------------------------------------------------------------
// Lineage and time.

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

/// The event is about an image or snapshot metadata: by name, by content, or an identity
/// known to be a qcow2 (a cut path is given the benefit of the doubt).
fn about_snapshot_file(ctx: &Ctx) -> bool {
    let ev = ctx.ev;
    has_image_ext(leaf_bytes(path_bytes(ev)), &ctx.det.image_extensions)
        || ev.path_cut("file")
        || cls(ev).is_some_and(|c| {
            matches!(
                c.format,
                Format::Qcow2 | Format::Libvirt | Format::LvmBackup | Format::Lvm
            )
        })
        || ev
            .file
            .as_ref()
            .is_some_and(|f| ctx.st.known_qcow2.contains(&(f.dev, f.ino)))
}

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

/// SM-A001: the agent's own `blinded` event (`Pipeline::blinded`): records about an image or
/// metadata file were dropped, so a tamper of it may have gone unseen.
fn a001(ctx: &mut Ctx) -> Option<Hit> {
    let ev = ctx.ev;
    if ev.action != Action::Blinded {
        return None;
    }
    let detail = |k: &str| {
        ev.detail
            .iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.as_str())
    };
    let dropped = detail(crate::event::DROPPED).unwrap_or("some");
    let file = match ev.file.as_ref() {
        Some(f) if f.path.is_none() => {
            format!("{}:{}", crate::paths::dev_display(f.dev), f.ino)
        }
        _ => leaf(ev),
    };
    let p = &ev.process;
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
    let slot = ev
        .detail
        .iter()
        .find(|(k, _)| *k == crate::event::URING_SLOT)
        .map_or("?", |(_, v)| v.as_str());
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
         ring are not seen one by one",
        actor(ev),
        leaf(ev)
    )))
}
