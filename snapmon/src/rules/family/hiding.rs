//! Rules stage, hiding (SM-H001, SM-H002): hidden files planted in a store, and qcow2 images
//! disguised by name or place.

use crate::rules::{
    ctx::{
        Ctx, Hit,
        Kind::{Create, Rename, Write},
    },
    def::RuleDef,
    helpers::{
        actor, cls, dir_of, has_image_ext, leaf, leaf_bytes, new_name, new_name_cut, new_path,
        path_bytes,
    },
};
use crate::{classify::Format, record::Severity};

pub const H001: RuleDef = RuleDef {
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
};

pub const H002: RuleDef = RuleDef {
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
};

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
        dir_of(new_path(ev).unwrap_or(b""))
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
    // On the bytes: the directories are ASCII, which a lossy text copy keeps as it is, and
    // this runs for every qcow2 write.
    let wrong_place = [
        "/etc/lvm/",
        "/libvirt/qemu/snapshot/",
        "/libvirt/qemu/checkpoint/",
    ]
    .iter()
    .any(|d| p.windows(d.len()).any(|w| w == d.as_bytes()));
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
