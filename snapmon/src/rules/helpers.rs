//! Rules stage, what the families share: reading an event's file, target, classification and actor,
//! and naming them in a one-sentence message.

use super::ctx::Ctx;
use crate::{
    classify::{Change, Classification, Format},
    event::{Action, Event, FileInfo, ProcessInfo},
};

pub(super) fn cls(ev: &Event) -> Option<&Classification> {
    ev.classification.as_ref()
}

/// The event's file by its last component, `?` when it has no path.
pub(super) fn leaf(ev: &Event) -> String {
    ev.file
        .as_ref()
        .and_then(|f| f.path.as_ref())
        .map(|p| crate::event::escape_bytes(leaf_bytes(&p.0)))
        .unwrap_or_else(|| "?".into())
}

/// The first value of a classification fact (`kind`, `domain` …).
pub(super) fn fact<'a>(c: &'a Classification, key: &str) -> Option<&'a str> {
    c.facts.iter().find(|f| f.0 == key).map(|f| f.1.as_str())
}

pub(super) fn has_fact(c: &Classification, key: &str) -> bool {
    c.facts.iter().any(|f| f.0 == key)
}

/// A rename or link judged by what it put at its target (classification fact `incoming`):
/// the target is what the finding is about.
pub(super) fn by_target(ev: &Event) -> bool {
    matches!(ev.action, Action::Rename | Action::Link)
        && cls(ev).is_some_and(|c| has_fact(c, "incoming"))
}

/// The file a finding is about: the target of a replace, else the event's file.
pub(super) fn subject_path(ev: &Event) -> &[u8] {
    if by_target(ev) {
        if let Some(p) = ev.target.as_ref().and_then(|t| t.path.as_ref()) {
            return &p.0;
        }
    }
    path_bytes(ev)
}

pub(super) fn subject_leaf(ev: &Event) -> String {
    crate::event::escape_bytes(leaf_bytes(subject_path(ev)))
}

/// ` by renaming X over it` for a replace, else nothing.
pub(super) fn how(ev: &Event) -> String {
    if !by_target(ev) {
        return String::new();
    }
    let src = crate::event::escape_bytes(leaf_bytes(path_bytes(ev)));
    let replaced = cls(ev).is_some_and(|c| has_fact(c, "replaced"));
    match (ev.action, replaced) {
        (Action::Link, _) => format!(" by linking {src} there"),
        (_, true) => format!(" by renaming {src} over it"),
        _ => format!(" by renaming {src} there"),
    }
}

pub(super) fn path_bytes(ev: &Event) -> &[u8] {
    file_path(ev.file.as_ref())
}

/// A file's path, empty when it has none.
pub(super) fn file_path(f: Option<&FileInfo>) -> &[u8] {
    f.and_then(|f| f.path.as_ref())
        .map(|p| p.0.as_slice())
        .unwrap_or(b"")
}

pub(super) fn dir_of(p: &[u8]) -> String {
    let end = p.iter().rposition(|&c| c == b'/').unwrap_or(0);
    crate::event::escape_bytes(&p[..end.max(1).min(p.len())])
}

/// How a message names a process: `memfd:NAME` for a program run from a memfd, `PATH
/// (deleted)` for one whose file is gone, else its name.
pub fn process_name(p: &ProcessInfo) -> String {
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

pub(super) fn changes<'a>(
    ev: &'a Event,
    pred: impl Fn(&str) -> bool + 'a,
) -> impl Iterator<Item = &'a Change> + 'a {
    cls(ev)
        .into_iter()
        .flat_map(|c| c.changes.iter())
        .filter(move |c| pred(&c.field))
}

pub(super) fn diff_text<'a>(it: impl Iterator<Item = &'a Change>) -> String {
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

/// The event's file is an identity already seen holding a qcow2 image.
pub(super) fn known_qcow2(ctx: &Ctx) -> bool {
    ctx.ev
        .file
        .as_ref()
        .is_some_and(|f| ctx.st.known_qcow2.contains(&(f.dev, f.ino)))
}

/// `a, b, c, …`: the first `most` labels, an ellipsis when there are more.
pub(super) fn first_few(labels: &[String], most: usize) -> String {
    let mut s = labels[..labels.len().min(most)].join(", ");
    if labels.len() > most {
        s.push_str(", …");
    }
    s
}

pub(super) fn verb(action: Action) -> &'static str {
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

pub(super) fn ioctl_name(ev: &Event) -> &str {
    cls(ev).and_then(|c| c.ioctl_name.as_deref()).unwrap_or("")
}

/// The decoded ioctl name `n` is `name`, alone or followed by its arguments.
pub(super) fn ioctl_is(n: &str, name: &str) -> bool {
    n.strip_prefix(name)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
}

pub(super) fn has_image_ext(name: &[u8], exts: &[String]) -> bool {
    let Some(dot) = name.iter().rposition(|&c| c == b'.') else {
        return false;
    };
    let ext = &name[dot + 1..];
    exts.iter().any(|e| e.as_bytes().eq_ignore_ascii_case(ext))
}

pub(super) fn leaf_bytes(p: &[u8]) -> &[u8] {
    let start = p
        .iter()
        .rposition(|&c| c == b'/')
        .map(|i| i + 1)
        .unwrap_or(0);
    &p[start..]
}

/// The path a create, rename or link gives a name: the target's, else the event's file.
pub(super) fn new_path(ev: &Event) -> Option<&[u8]> {
    match ev.action {
        Action::Rename | Action::Link | Action::Symlink => {
            ev.target.as_ref()?.path.as_ref().map(|p| p.0.as_slice())
        }
        _ => Some(path_bytes(ev)),
    }
}

pub(super) fn new_name(ev: &Event) -> Option<&[u8]> {
    new_path(ev).map(leaf_bytes)
}

/// Is the new name only the start of one (cut, unresolved)? Then it is shown with an
/// ellipsis, and only its start can be judged.
pub(super) fn new_name_cut(ev: &Event) -> bool {
    match ev.action {
        Action::Rename | Action::Link | Action::Symlink => ev.path_cut("target"),
        _ => ev.path_cut("file"),
    }
}

/// The event is about an image or snapshot metadata: by name, by content, or an identity
/// known to be a qcow2 (a cut path is given the benefit of the doubt).
pub(super) fn about_snapshot_file(ctx: &Ctx) -> bool {
    let ev = ctx.ev;
    has_image_ext(leaf_bytes(path_bytes(ev)), &ctx.det.image_extensions)
        || ev.path_cut("file")
        || cls(ev).is_some_and(|c| {
            matches!(
                c.format,
                Format::Qcow2 | Format::Libvirt | Format::LvmBackup | Format::Lvm
            )
        })
        || known_qcow2(ctx)
}
