//! Rules stage, ransomware shapes (SM-R001, SM-R002): images renamed to new extensions in a burst,
//! and ransom notes dropped in a store.

use crate::rules::{
    ctx::{
        Ctx, Hit,
        Kind::{Create, Rename},
    },
    def::RuleDef,
    helpers::{
        actor, dir_of, first_few, has_image_ext, leaf, leaf_bytes, new_name, new_name_cut,
        path_bytes,
    },
};
use crate::{event::Event, record::Severity};

pub const R001: RuleDef = RuleDef {
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
};

pub const R002: RuleDef = RuleDef {
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
};

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
    let (labels, seqs) = rate.take();
    let mut h = Hit::msg(format!(
        "{} renamed {} disk images to new extensions within {} s ({})",
        actor(ev),
        labels.len(),
        window / 1_000_000_000,
        first_few(&labels, 3)
    ));
    h.related = seqs;
    Some(h)
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

fn target_leaf(ev: &Event) -> Option<String> {
    let p = ev.target.as_ref()?.path.as_ref()?;
    Some(crate::event::escape_bytes(leaf_bytes(&p.0)))
}
