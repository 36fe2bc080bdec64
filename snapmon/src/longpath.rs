//! Paths longer than a record holds: the kernel copies their first PATH_LEN-1 bytes and
//! reports their whole length; such a cut path is resolved here from what the path table and
//! the filesystem vouch for, or shown cut, with an ellipsis, and marked as such.

use std::{
    collections::{BTreeSet, HashSet, VecDeque},
    ffi::{OsStr, OsString},
    os::unix::{
        ffi::{OsStrExt, OsStringExt},
        fs::DirEntryExt,
    },
    path::{Path, PathBuf},
};

use snapmon_common::FileKey;

/// Appended to a cut path so no reader takes it for a whole one.
pub const ELLIPSIS: &str = "…";

/// Directories listed, and entries read in each, for one resolution: an attacker's huge or
/// deep tree costs a bounded read, never a stalled event loop.
const MAX_DIRS: usize = 64;
const MAX_ENTRIES: usize = 8192;

/// A path the kernel could not copy whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// Its first bytes.
    pub head: Vec<u8>,
    /// Its whole length in bytes, when the kernel told it.
    pub len: Option<usize>,
}

/// Where the name is looked for first: a name that went (or is going) away is in the path
/// table; a new one is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    Known,
    Disk,
}

impl Cut {
    /// From a record flagged cut: its buffer and its length field. The kernel flags every
    /// path that fills the buffer; the length says whether it is whole after all (None).
    pub fn from_record(buf: &[u8], len: usize) -> Option<Cut> {
        let head = crate::decode::cstr(buf, buf.len());
        (len > head.len()).then(|| Cut {
            head: head.to_vec(),
            len: Some(len),
        })
    }

    /// A relative cut path as seen from its base directory.
    pub fn under(&self, base: &Path) -> Cut {
        let mut head = base.as_os_str().as_bytes().to_vec();
        if !head.ends_with(b"/") {
            head.push(b'/');
        }
        let extra = head.len();
        head.extend_from_slice(&self.head);
        Cut {
            head,
            len: self.len.map(|l| l + extra),
        }
    }

    /// Could `p` be the whole path?
    pub fn fits(&self, p: &[u8]) -> bool {
        p.starts_with(&self.head) && self.len.is_none_or(|l| p.len() == l)
    }

    /// Shown cut: its bytes and an ellipsis.
    pub fn marked(&self) -> PathBuf {
        let mut b = self.head.clone();
        b.extend_from_slice(ELLIPSIS.as_bytes());
        PathBuf::from(OsString::from_vec(b))
    }

    /// Absolute, without `.`, `..` or empty components: bytes compare with real paths.
    pub fn plain(&self) -> bool {
        let Some(rest) = self.head.strip_prefix(b"/") else {
            return false;
        };
        let mut parts: Vec<&[u8]> = rest.split(|&c| c == b'/').collect();
        // The last part is where the cut fell: anything, even empty.
        parts.pop();
        parts.iter().all(|c| !matches!(*c, b"" | b"." | b".."))
    }

    /// The one object the path can name, with inode `ino` when given: a path in `known`
    /// (the path table) or an entry on disk, looked for from the last directory the cut holds
    /// whole and from the known directories it may run through. None when nothing or more
    /// than one thing fits.
    pub fn resolve<'a>(
        &self,
        known: impl Iterator<Item = (&'a FileKey, &'a PathBuf)>,
        look: Look,
        ino: Option<u64>,
    ) -> Option<PathBuf> {
        if !self.plain() {
            return None;
        }
        let near: Vec<(&FileKey, &[u8])> = known
            .map(|(k, p)| (k, p.as_os_str().as_bytes()))
            .filter(|(_, p)| p.starts_with(&self.head))
            .collect();
        let in_table: BTreeSet<&[u8]> = near
            .iter()
            .filter(|(k, p)| ino.is_none_or(|i| k.ino == i) && self.fits(p))
            .map(|(_, p)| *p)
            .collect();
        if look == Look::Known && !in_table.is_empty() {
            return only(in_table);
        }
        // Deepest first: the parent of a new name is usually the latest directory learned.
        let mut seeds: Vec<&[u8]> = near
            .iter()
            .map(|(_, p)| *p)
            .filter(|p| self.len.is_none_or(|l| p.len() + 2 <= l))
            .collect();
        seeds.sort_by_key(|p| std::cmp::Reverse(p.len()));
        let on_disk = self.on_disk(seeds, ino);
        match (look, on_disk.len()) {
            (_, 1) => only(on_disk),
            (Look::Disk, 0) => only(in_table),
            _ => None,
        }
    }

    /// Entries that fit, breadth-first from `seeds` and the last directory the cut holds
    /// whole, into subdirectories the path may run through (bounded).
    fn on_disk(&self, seeds: Vec<&[u8]>, ino: Option<u64>) -> BTreeSet<Vec<u8>> {
        let mut queue: VecDeque<Vec<u8>> = seeds.into_iter().map(|s| s.to_vec()).collect();
        if let Some(slash) = self.head.iter().rposition(|&c| c == b'/') {
            queue.push_back(if slash == 0 {
                b"/".to_vec()
            } else {
                self.head[..slash].to_vec()
            });
        }
        let mut found = BTreeSet::new();
        let mut listed = HashSet::new();
        while let Some(dir) = queue.pop_front() {
            if listed.len() == MAX_DIRS || found.len() > 1 {
                break;
            }
            if !listed.insert(dir.clone()) {
                continue;
            }
            let Ok(rd) = std::fs::read_dir(Path::new(OsStr::from_bytes(&dir))) else {
                continue;
            };
            for ent in rd.take(MAX_ENTRIES).flatten() {
                let mut p = dir.clone();
                if !p.ends_with(b"/") {
                    p.push(b'/');
                }
                p.extend_from_slice(ent.file_name().as_bytes());
                // The cut and the entry agree as far as both go.
                let n = p.len().min(self.head.len());
                if p[..n] != self.head[..n] {
                    continue;
                }
                let deeper = self.len.is_none_or(|l| p.len() + 2 <= l);
                if deeper && ent.file_type().is_ok_and(|t| t.is_dir()) {
                    queue.push_back(p.clone());
                }
                if self.fits(&p) && ino.is_none_or(|i| ent.ino() == i) {
                    found.insert(p);
                }
            }
        }
        found
    }
}

/// The one path of a set, or None.
fn only<B: AsRef<[u8]>>(s: BTreeSet<B>) -> Option<PathBuf> {
    let mut it = s.into_iter();
    match (it.next(), it.next()) {
        (Some(p), None) => Some(PathBuf::from(OsStr::from_bytes(p.as_ref()))),
        _ => None,
    }
}

/// The path of `key`, from its entry in directory `dir` (an open whose name was cut):
/// the one entry with its inode number that is the object itself.
pub fn entry_with_ino(dir: &Path, key: FileKey) -> Option<PathBuf> {
    let rd = std::fs::read_dir(dir).ok()?;
    let mut hits = rd
        .take(MAX_ENTRIES)
        .flatten()
        .filter(|e| e.ino() == key.ino)
        .map(|e| e.path());
    let p = hits.next()?;
    if hits.next().is_some() {
        return None; // hard links: more than one name
    }
    let md = std::fs::symlink_metadata(&p).ok()?;
    (crate::paths::key_for(&p, &md) == key).then_some(p)
}

/// The path an open file descriptor of a live process names, when it is the object `key`
/// (the kernel's own path for it, any length).
pub fn fd_path(tgid: u32, fd: i32, key: FileKey) -> Option<PathBuf> {
    if fd < 0 {
        return None;
    }
    let p = std::fs::read_link(format!("/proc/{tgid}/fd/{fd}")).ok()?;
    let md = std::fs::symlink_metadata(&p).ok()?;
    (p.is_absolute() && crate::paths::key_for(&p, &md) == key).then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapmon_common::PATH_LEN;
    use std::os::unix::fs::MetadataExt;

    fn tmpdir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("snapmon-longpath-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// What the kernel puts in a record for `p`: the buffer and the length field.
    fn record(p: &[u8]) -> ([u8; PATH_LEN], usize) {
        let mut buf = [0u8; PATH_LEN];
        let n = p.len().min(PATH_LEN - 1);
        buf[..n].copy_from_slice(&p[..n]);
        (buf, p.len())
    }

    fn key(p: &Path) -> FileKey {
        let md = std::fs::symlink_metadata(p).unwrap();
        FileKey {
            dev: crate::paths::kernel_dev(md.dev()),
            _pad: 0,
            ino: md.ino(),
        }
    }

    /// A chain of directories from `root` down to PATH_MAX, each level `seg` long.
    fn chain(root: &Path, seg: usize) -> Vec<PathBuf> {
        let mut out = vec![];
        let mut p = root.to_path_buf();
        loop {
            let next = p.join("d".repeat(seg));
            if next.as_os_str().len() >= snapmon_common::PATH_MAX {
                return out;
            }
            std::fs::create_dir(&next).unwrap();
            out.push(next.clone());
            p = next;
        }
    }

    #[test]
    fn a_whole_path_that_fills_the_buffer_is_not_cut() {
        for len in [0, 1, PATH_LEN - 2, PATH_LEN - 1] {
            let p = vec![b'a'; len];
            let (buf, n) = record(&p);
            assert_eq!(Cut::from_record(&buf, n), None, "{len}");
        }
        let p = vec![b'a'; PATH_LEN];
        let (buf, n) = record(&p);
        let c = Cut::from_record(&buf, n).unwrap();
        assert_eq!((c.head.len(), c.len), (PATH_LEN - 1, Some(PATH_LEN)));
    }

    #[test]
    fn every_directory_of_a_chain_to_path_max_resolves_at_its_own_length() {
        let root = tmpdir("chain");
        let dirs = chain(&root, 9);
        assert!(dirs.len() > 300, "{}", dirs.len());
        // The agent learns each directory as its mkdir is resolved.
        let mut table = std::collections::HashMap::new();
        let mut cut = 0;
        for d in &dirs {
            let b = d.as_os_str().as_bytes();
            let (buf, n) = record(b);
            match Cut::from_record(&buf, n) {
                None => assert!(b.len() < PATH_LEN),
                Some(c) => {
                    cut += 1;
                    // A new directory (mkdir): the levels above and below it share its
                    // first bytes but not its length.
                    assert_eq!(c.resolve(table.iter(), Look::Disk, None).as_ref(), Some(d));
                    // An rmdir, from the table, before and after the directory went.
                    table.insert(key(d), d.clone());
                    assert_eq!(c.resolve(table.iter(), Look::Known, None).as_ref(), Some(d));
                }
            }
            table.insert(key(d), d.clone());
        }
        assert!(cut > 300);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_path_cut_at_every_length_resolves_or_says_nothing() {
        // One file whose path is PATH_MAX-1 bytes, seen cut at every length from 1 on: the
        // answer is that file or None (too little left to tell), never another object.
        let root = tmpdir("every");
        let dirs = chain(&root, 200);
        let last = dirs.last().unwrap();
        let room = snapmon_common::PATH_MAX - 1 - last.as_os_str().len() - 1;
        let f = last.join("f".repeat(room.min(255)));
        std::fs::write(&f, b"x").unwrap();
        // A decoy sharing all but the last byte of the name.
        let mut decoy = f.as_os_str().as_bytes().to_vec();
        *decoy.last_mut().unwrap() = b'g';
        std::fs::write(OsString::from_vec(decoy.clone()), b"y").unwrap();
        let fb = f.as_os_str().as_bytes();
        let table = std::collections::HashMap::from([(key(&f), f.clone())]);
        // Every cut inside the test's tree (above it, the rest of /tmp is what fits).
        for cut_at in root.as_os_str().len() + 1..fb.len() {
            let c = Cut {
                head: fb[..cut_at].to_vec(),
                len: Some(fb.len()),
            };
            for look in [Look::Known, Look::Disk] {
                let r = c.resolve(table.iter(), look, None);
                assert!(
                    r.is_none() || r.as_ref() == Some(&f),
                    "{cut_at} {look:?}: {r:?}"
                );
                // By identity it is always that file once the cut holds its directory whole.
                let r = c.resolve(std::iter::empty(), look, Some(key(&f).ino));
                if cut_at > last.as_os_str().len() {
                    assert_eq!(r.as_ref(), Some(&f), "{cut_at} by inode");
                } else {
                    assert!(r.is_none() || r.as_ref() == Some(&f), "{cut_at}: {r:?}");
                }
            }
            // From the table alone (the file gone, as after an unlink), the table's name.
            let r = c.resolve(table.iter(), Look::Known, None);
            assert_eq!(r.as_ref(), Some(&f), "{cut_at} from the table");
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn renamed_targets_sharing_a_prefix_and_length_are_told_apart_by_inode() {
        let d = tmpdir("rename");
        let long = "x".repeat(240);
        let mut keys = vec![];
        for i in 0..6 {
            let p = d.join(format!("{long}-{i}.qcow2.locked"));
            std::fs::write(&p, b"q").unwrap();
            keys.push((key(&p), p));
        }
        for (k, p) in &keys {
            let (buf, n) = record(p.as_os_str().as_bytes());
            let c = Cut::from_record(&buf, n).unwrap();
            assert_eq!(c.resolve(std::iter::empty(), Look::Disk, None), None);
            assert_eq!(
                c.resolve(std::iter::empty(), Look::Disk, Some(k.ino))
                    .as_ref(),
                Some(p)
            );
            assert_eq!(entry_with_ino(&d, *k).as_ref(), Some(p));
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn unplain_cuts_are_never_resolved_and_marks_say_so() {
        let c = Cut {
            head: b"/s/../s/x".to_vec(),
            len: Some(300),
        };
        assert!(!c.plain());
        assert_eq!(c.resolve(std::iter::empty(), Look::Disk, None), None);
        assert!(!Cut {
            head: b"s/x".to_vec(),
            len: None
        }
        .plain());
        assert!(Cut {
            head: b"/s/x/".to_vec(),
            len: None
        }
        .plain());
        assert!(Cut {
            head: b"/s/x/..".to_vec(),
            len: None
        }
        .plain());
        assert_eq!(c.marked(), PathBuf::from("/s/../s/x…"));
        let r = Cut {
            head: b"a/b".to_vec(),
            len: Some(280),
        }
        .under(Path::new("/srv/x"));
        assert_eq!((r.head.as_slice(), r.len), (&b"/srv/x/a/b"[..], Some(287)));
    }

    #[test]
    fn fd_path_names_only_the_object_it_was_asked_for() {
        let d = tmpdir("fd");
        let p = d.join("f");
        std::fs::write(&p, b"x").unwrap();
        let f = std::fs::File::open(&p).unwrap();
        use std::os::fd::AsRawFd;
        let me = std::process::id();
        assert_eq!(fd_path(me, f.as_raw_fd(), key(&p)).as_ref(), Some(&p));
        assert_eq!(fd_path(me, f.as_raw_fd(), key(&d)), None);
        assert_eq!(fd_path(me, -1, key(&p)), None);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
