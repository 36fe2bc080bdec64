//! Classify stage, renames and links: what a rename or link puts in place in a store is
//! judged by the target's kind (libvirt XML, LVM backup/archive, image) and compared, field
//! by field, with the shadow of the file it replaced, the same diff a header write gets.

use std::path::{Path, PathBuf};

use super::{
    fileread, libvirt, load_state_from, lvm, lvm_changes, publish, qcow2,
    recheck::{Key, Pending},
    Change, Classification, Classifier, FileState, Format,
};
use crate::event::{Bytes, Event};

/// What was put at the target.
enum Incoming {
    File {
        key: Key,
        state: FileState,
    },
    Symlink(String),
    Special(&'static str),
    Missing,
    /// Its filesystem did not answer within the read budget.
    Unread,
}

impl Incoming {
    fn read(dev: Option<u32>, at: &Path) -> Incoming {
        let p = at.to_path_buf();
        fileread::bounded(dev, at, move || Incoming::read_now(&p)).unwrap_or(Incoming::Unread)
    }

    fn read_now(at: &Path) -> Incoming {
        match fileread::open(at) {
            Ok(mut f) => {
                let Ok(md) = f.metadata() else {
                    return Incoming::Missing;
                };
                let k = crate::paths::key_for(at, &md);
                Incoming::File {
                    key: (k.dev, k.ino),
                    state: load_state_from(&mut f),
                }
            }
            Err(fileread::OpenError::Symlink(to)) => Incoming::Symlink(to),
            Err(fileread::OpenError::NotRegular(k)) => Incoming::Special(k),
            Err(fileread::OpenError::Io(_)) => Incoming::Missing,
        }
    }

    /// How the incoming file's first bytes read where a format's magic was.
    fn magic_text(&self, at: &Path, n: usize) -> String {
        match self {
            Incoming::File { key, .. } => {
                let p = at.to_path_buf();
                let head = fileread::bounded(Some(key.0), at, move || {
                    fileread::open(&p)
                        .ok()
                        .and_then(|f| fileread::read_at(&f, 0, n).ok())
                })
                .ok()
                .flatten();
                match head {
                    Some(b) if b.is_empty() => "(empty)".into(),
                    Some(b) => crate::event::escape_bytes(&b),
                    None => "(unreadable)".into(),
                }
            }
            Incoming::Symlink(to) => format!("(symlink to {to})"),
            Incoming::Special(k) => format!("({k})"),
            Incoming::Missing => "(missing)".into(),
            Incoming::Unread => "(not read in time)".into(),
        }
    }
}

impl Classifier {
    /// Judge a rename or link: by the target's kind, against the replaced file's shadow.
    /// Returns the classification and the identity now at the target (when known).
    pub(super) fn judge_replace(
        &mut self,
        ev: &Event,
        p: &Pending,
    ) -> (Option<Classification>, Option<Key>) {
        let located = p.located();
        // The incoming file: at the target once there, else still at its source name.
        let at: PathBuf = match (&located, &p.source) {
            (Some(_), _) | (None, None) => p.target.clone(),
            (None, Some(s)) => s.clone(),
        };
        // Out of time and the target still the old file: the rename failed or has not
        // happened; nothing was replaced (yet), so there is nothing to diff against.
        let replaced = p.replaced.filter(|_| located.is_some());
        let facts = |c: &mut Classification| {
            if let Some(s) = &p.source {
                c.facts
                    .push(("incoming".into(), Bytes::from_path(s).display()));
            }
            if replaced.is_some() {
                c.facts
                    .push(("replaced".into(), Bytes::from_path(&p.target).display()));
            }
        };
        let target_s = p.target.to_string_lossy();
        // Metadata files are judged by the target's name (sed -i: a temp file renamed over
        // the XML), else by the source's (a metadata file renamed away).
        let named = libvirt::classify_libvirt_path(&target_s)
            .map(|lf| (lf, true))
            .or_else(|| {
                let s = p.source.as_ref()?.to_string_lossy().into_owned();
                libvirt::classify_libvirt_path(&s).map(|lf| (lf, false))
            });
        if let Some((lf, by_target)) = named {
            let mut c = super::classify_libvirt(&lf, ev, Some(&at));
            if by_target {
                facts(&mut c);
            }
            self.settle_replace(p, located);
            return (Some(c), located);
        }
        let lvm_src = p
            .source
            .as_ref()
            .map(|s| s.to_string_lossy().into_owned())
            .filter(|s| super::lvm_text_path(s));
        if super::lvm_text_path(&target_s) || lvm_src.is_some() {
            let ps = if super::lvm_text_path(&target_s) {
                target_s.into_owned()
            } else {
                lvm_src.unwrap_or_default()
            };
            let mut c = super::classify_lvm_file(&ps, Some(&at), ev.file.as_ref().map(|f| f.dev));
            if let Some(c) = &mut c {
                facts(c);
            }
            self.settle_replace(p, located);
            return (c, located);
        }
        let incoming = Incoming::read(ev.file.as_ref().map(|f| f.dev), &at);
        let old = replaced.and_then(|k| self.state.get(&k));
        let mut c = Classification::default();
        match (old, &incoming) {
            (
                Some(FileState::Qcow2(o)),
                Incoming::File {
                    state: FileState::Qcow2(n),
                    ..
                },
            ) => {
                c.format = Format::Qcow2;
                c.changes = qcow2::diff_images(&o.shadow.image, &n.shadow.image);
            }
            // Unread is not "no magic": the replace is reported, its content unjudged.
            (Some(FileState::Qcow2(_)), Incoming::Unread) => c.format = Format::Qcow2,
            (Some(FileState::Lvm(_)), Incoming::Unread) => c.format = Format::Lvm,
            (Some(FileState::Qcow2(o)), other) => {
                c.format = Format::Qcow2;
                c.changes.push(Change::new(
                    "magic",
                    qcow2::escape_bytes(&o.shadow.image.header.magic.to_be_bytes()),
                    other.magic_text(&at, 4),
                ));
            }
            (
                Some(FileState::Lvm(o)),
                Incoming::File {
                    state: FileState::Lvm(n),
                    ..
                },
            ) => {
                c.format = Format::Lvm;
                if let (Some(a), Some(b)) = (&o.vg, &n.vg) {
                    c.changes = lvm_changes(lvm::diff_vg(a, b));
                }
            }
            (Some(FileState::Lvm(_)), other) => {
                c.format = Format::Lvm;
                c.changes
                    .push(Change::new("label", "LABELONE", other.magic_text(&at, 8)));
            }
            (
                _,
                Incoming::File {
                    state: FileState::Qcow2(_),
                    ..
                },
            ) => c.format = Format::Qcow2,
            (
                _,
                Incoming::File {
                    state: FileState::Lvm(_),
                    ..
                },
            ) => c.format = Format::Lvm,
            (_, Incoming::File { state, .. }) => {
                if let Some(fmt) = state.magic_only() {
                    c.format = fmt;
                } else {
                    self.settle_replace(p, located);
                    return (None, located);
                }
            }
            _ => {
                self.settle_replace(p, located);
                return (None, located);
            }
        }
        // A known image replaced as a whole: every region it had is the incoming file's now.
        if matches!(old, Some(FileState::Qcow2(_) | FileState::Lvm(_))) {
            c.regions.push("replaced".into());
        }
        facts(&mut c);
        self.settle_replace(p, located);
        if let Incoming::File { key, state } = incoming {
            if !matches!(state, FileState::Other(_)) {
                self.state.remove(&key);
                self.remember(key, state);
            }
        }
        (Some(c), located)
    }

    /// The replaced identity no longer has this name: its shadow and filter go.
    fn settle_replace(&mut self, p: &Pending, located: Option<Key>) {
        if p.link {
            return;
        }
        if let Some(r) = p.replaced {
            // Judged before the rename landed (or it failed): the old file is still there.
            if located.is_some() {
                self.state.remove(&r);
                publish(&mut self.published, &mut self.filter_updates, r, None);
                self.stats.shadows = self.state.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::qcow2::testutil::{image_with_snapshots, qemu_img, TmpDir};
    use super::*;
    use crate::event::Action;
    use crate::event::FileInfo;

    fn key(p: &Path) -> Key {
        let k = crate::paths::key_for(p, &std::fs::metadata(p).unwrap());
        (k.dev, k.ino)
    }

    /// A rename event as the enrich stage builds it: the source by path (its identity when
    /// known), the target by path with the identity the name had before.
    fn rename_ev(src: &Path, dst: &Path, src_key: Option<Key>, replaced: Option<Key>) -> Event {
        let fi = |p: &Path, k: Option<Key>| FileInfo {
            path: Some(Bytes::from_path(p)),
            dev: k.map_or(0, |k| k.0),
            ino: k.map_or(0, |k| k.1),
            size: None,
        };
        Event {
            action: Action::Rename,
            file: Some(fi(src, src_key)),
            target: Some(fi(dst, replaced)),
            ..Default::default()
        }
    }

    fn classifier_knowing(img: &Path) -> Classifier {
        let mut c = Classifier::new();
        let k = crate::paths::key_for(img, &std::fs::metadata(img).unwrap());
        let p = img.to_path_buf();
        c.preload(std::iter::once((&k, &p)));
        c
    }

    fn texts(c: &Classification) -> Vec<String> {
        c.changes.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_doctored_copy_renamed_over_an_image_is_diffed_against_the_replaced_shadow() {
        let store = TmpDir::new("replace-store");
        let outside = TmpDir::new("replace-outside");
        let img = image_with_snapshots(&store, "vm1.qcow2", &[]);
        let mut c = classifier_knowing(&img);
        let old = key(&img);
        // Built outside the store: the same image with both snapshots hidden.
        let doc = outside.path("doctored.qcow2");
        std::fs::copy(&img, &doc).unwrap();
        qcow2::testutil::patch(&doc, 60, &0u32.to_be_bytes());
        std::fs::rename(&doc, &img).unwrap();
        let ev = rename_ev(&doc, &img, None, Some(old));
        let cl = c
            .classify(&ev, Some(&doc))
            .expect("a replace is classified");
        assert_eq!(cl.format, "qcow2");
        assert_eq!(cl.regions, vec!["replaced".to_string()]);
        let t = texts(&cl);
        assert!(t.contains(&"nb_snapshots: 2 → 0".to_string()), "{t:?}");
        // Every snapshot the replacement no longer lists, each by name.
        assert!(t.contains(&"snapshot_removed: s1".to_string()), "{t:?}");
        assert!(t.contains(&"snapshot_removed: s2".to_string()), "{t:?}");
        let facts: Vec<&str> = cl.facts.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(facts, ["incoming", "replaced"]);
        // The incoming file is the image now: a later header write diffs against it.
        let again = c
            .classify(
                &Event {
                    action: Action::Pwrite64,
                    file: Some(FileInfo {
                        dev: key(&img).0,
                        ino: key(&img).1,
                        path: Some(Bytes::from_path(&img)),
                        size: None,
                    }),
                    write: Some(crate::event::WriteInfo {
                        op: crate::event::WriteOp::Pwrite64,
                        offset: 60,
                        length: 4,
                        data: 2u32.to_be_bytes().to_vec(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Some(&img),
            )
            .unwrap();
        assert!(
            texts(&again).contains(&"nb_snapshots: 0 → 2".to_string()),
            "{:?}",
            again.changes
        );
    }

    #[test]
    fn a_replace_that_redirects_the_backing_file_or_drops_the_magic_says_so() {
        let store = TmpDir::new("replace-backing");
        let img = store.path("vm1.qcow2");
        qemu_img(&["create", "-q", "-f", "qcow2", &store.s("vm1.qcow2"), "16M"]);
        let mut c = classifier_knowing(&img);
        // A copy rebased onto a volatile path, renamed over the image from inside the store.
        let tmp = store.path(".tmp1");
        std::fs::copy(&img, &tmp).unwrap();
        qcow2::testutil::rebase_unsafe(&store.s(".tmp1"), "/dev/shm/evil.qcow2");
        let (old, new) = (key(&img), key(&tmp));
        std::fs::rename(&tmp, &img).unwrap();
        let cl = c
            .classify(&rename_ev(&tmp, &img, Some(new), Some(old)), Some(&tmp))
            .unwrap();
        let t = texts(&cl);
        assert!(
            t.contains(&"backing_file: (none) → /dev/shm/evil.qcow2".to_string()),
            "{t:?}"
        );
        // Random bytes renamed over it: the magic is gone.
        let junk = store.path("junk");
        std::fs::write(&junk, [0x5au8; 8192]).unwrap();
        let (old, new) = (key(&img), key(&junk));
        std::fs::rename(&junk, &img).unwrap();
        let cl = c
            .classify(&rename_ev(&junk, &img, Some(new), Some(old)), Some(&junk))
            .unwrap();
        assert_eq!(texts(&cl), ["magic: QFI\\xfb → ZZZZ"]);
        // A symlink renamed over an image points it elsewhere: never followed, named.
        qemu_img(&["create", "-q", "-f", "qcow2", &store.s("vm2.qcow2"), "16M"]);
        let img2 = store.path("vm2.qcow2");
        let k = crate::paths::key_for(&img2, &std::fs::metadata(&img2).unwrap());
        c.preload(std::iter::once((&k, &img2)));
        let link = store.path("ln");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        std::fs::rename(&link, &img2).unwrap();
        let cl = c
            .classify(
                &rename_ev(&link, &img2, None, Some((k.dev, k.ino))),
                Some(&link),
            )
            .unwrap();
        assert_eq!(texts(&cl), ["magic: QFI\\xfb → (symlink to /dev/zero)"]);
    }

    #[test]
    fn sed_in_place_on_libvirt_xml_is_judged_by_the_target_name() {
        let root = TmpDir::new("replace-libvirt");
        let dir = root.path("home/.config/libvirt/qemu/snapshot/dom1");
        std::fs::create_dir_all(&dir).unwrap();
        let xml = dir.join("s1.xml");
        std::fs::write(
            &xml,
            "<domainsnapshot><name>s1</name><parent><name>s0</name></parent></domainsnapshot>",
        )
        .unwrap();
        let mut c = Classifier::new();
        // sed -i: a temp file in the same directory, renamed over the XML.
        let tmp = dir.join("sedAb12Cd");
        std::fs::write(&tmp, "<domainsnapshot><name>s1</name></domainsnapshot>").unwrap();
        let (old, new) = (key(&xml), key(&tmp));
        std::fs::rename(&tmp, &xml).unwrap();
        let cl = c
            .classify(&rename_ev(&tmp, &xml, Some(new), Some(old)), Some(&tmp))
            .expect("libvirt metadata replaced");
        assert_eq!(cl.format, "libvirt");
        let f = |k: &str| cl.facts.iter().find(|f| f.0 == k).map(|f| f.1.clone());
        assert_eq!(f("name").as_deref(), Some("s1"));
        assert_eq!(f("domain").as_deref(), Some("dom1"));
        assert_eq!(f("replaced"), Some(xml.display().to_string()));
        // What is in place now has no parent: read after the rename, not before.
        assert_eq!(f("parent"), None);
        // libvirt's own pattern (`s2.xml.new` → `s2.xml`) is recognised the same way.
        let new_xml = dir.join("s2.xml.new");
        std::fs::write(&new_xml, "<domainsnapshot><name>s2</name></domainsnapshot>").unwrap();
        let k = key(&new_xml);
        std::fs::rename(&new_xml, dir.join("s2.xml")).unwrap();
        let cl = c
            .classify(
                &rename_ev(&new_xml, &dir.join("s2.xml"), Some(k), None),
                Some(&new_xml),
            )
            .unwrap();
        assert_eq!(cl.format, "libvirt");
        assert!(!cl.facts.iter().any(|f| f.0 == "replaced"));
    }

    #[test]
    fn a_rename_judged_before_it_lands_waits_for_the_target_to_change() {
        let store = TmpDir::new("replace-early");
        let img = image_with_snapshots(&store, "vm1.qcow2", &[]);
        let mut c = classifier_knowing(&img);
        let doc = store.path(".doc");
        std::fs::copy(&img, &doc).unwrap();
        qcow2::testutil::patch(&doc, 60, &1u32.to_be_bytes());
        let (old, new) = (key(&img), key(&doc));
        let ev = rename_ev(&doc, &img, Some(new), Some(old));
        // The hook fired; the rename has not happened yet.
        let now = std::time::Instant::now();
        let h = match c.judge(&ev, Some(&doc), now) {
            super::super::Verdict::Hold(h) => h,
            super::super::Verdict::Now(c) => panic!("judged before the rename: {c:?}"),
        };
        assert!(!h.landed(now));
        assert_eq!(h.keys(), vec![old, new]);
        std::fs::rename(&doc, &img).unwrap();
        assert!(h.landed(now));
        let done = c.complete(&ev, Some(&doc), h);
        let cl = done.classification.unwrap();
        assert!(
            texts(&cl).contains(&"nb_snapshots: 2 → 1".to_string()),
            "{:?}",
            cl.changes
        );
        assert_eq!(done.placed, Some((img.clone(), new, false)));
        // A rename that never lands (it failed) is judged out of time: the image is
        // still the old one, so nothing was replaced.
        let other = store.path(".other");
        std::fs::write(&other, b"x").unwrap();
        let ev = rename_ev(&other, &img, Some(key(&other)), Some(key(&img)));
        let h = match c.judge(&ev, Some(&other), now) {
            super::super::Verdict::Hold(h) => h,
            super::super::Verdict::Now(c) => panic!("{c:?}"),
        };
        let done = c.complete(&ev, Some(&other), h);
        assert_eq!(done.placed, None);
        assert!(done.classification.is_none_or(|c| c.changes.is_empty()));
    }
}
