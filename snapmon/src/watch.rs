//! Watch set: turns configured paths into the kernel's (dev, inode) and path-hash filters,
//! and keeps the identity ↔ path tables that the enrich stage uses to name files, indexed
//! both ways so no event costs a scan of the table (a flood of names is routine).

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use snapmon_common::{dir_flags, fnv1a, FileKey};

use crate::paths::{key_for, normalize};

/// Where the filter entries go: the kernel maps in production, memory in tests.
pub trait WatchMaps {
    /// Watch `key`; an `ordinary` (not image, not metadata) one counts towards the ordinary
    /// share. A key in the map already is left as it is (and counted as it was).
    /// `generation`: the file's `i_generation` when known (`paths::generation_of`), which
    /// the kernel checks the inode against on every hit.
    fn add_file(
        &mut self,
        key: FileKey,
        ordinary: bool,
        generation: Option<u32>,
    ) -> Result<(), String>;
    /// Withdraw a file whose last watched name went (absent already is fine); an ordinary
    /// entry gives its room in the share back.
    fn remove_file(&mut self, key: FileKey);
    /// Forget the loop devices (by device number) whose nodes alias `node`: the kernel put
    /// them there at attach, for any other node of the same device.
    fn remove_rdev_alias(&mut self, _node: FileKey) {}
    /// Take loop device `rdev` (the kernel's `MKDEV` encoding) for `node`, as the attach
    /// hook does: for a device attached before the agent started.
    fn add_rdev_alias(&mut self, _rdev: u32, _node: FileKey) {}
    /// Is `key` in the file map (the kernel may have put it there at create)?
    fn has_file(&self, key: FileKey) -> bool;
    /// Ordinary entries in the file map as kernel and agent counted them (None: unknown).
    fn ordinary_entries(&self) -> Option<u64> {
        None
    }
    /// Tell the kernel which extensions (`snapmon_common::ext_hash`) name images and
    /// metadata: those it admits past the ordinary share.
    fn set_precious_exts(&mut self, _hashes: &[u64]) -> Result<(), String> {
        Ok(())
    }
    fn add_dir(&mut self, key: FileKey, flags: u32) -> Result<(), String>;
    /// `key` is a watched image or metadata file: the kernel takes an overlay inode with its
    /// inode number for a candidate alias (`open_watch::OVERLAY`).
    fn note_image(&mut self, _key: FileKey) {}
    /// Withdraw a directory entry (an overlay's merged-view alias, when the overlay goes).
    fn remove_dir(&mut self, key: FileKey);
    fn add_prefix(&mut self, hash: u64) -> Result<(), String>;
    /// Match (or stop matching) paths whose last component hashes to `hash`
    /// (`snapmon_common::leaf_hash`) whatever their directories: a watched image or metadata
    /// file's name, for paths through a symlinked or bind-mounted store.
    fn set_leaf(&mut self, _hash: u64, _on: bool) -> Result<(), String> {
        Ok(())
    }
    /// Past the ordinary share of the file map the kernel leaves new files to the agent,
    /// which admits only images and metadata into the headroom.
    fn set_reserve(&mut self, on: bool) -> Result<(), String>;
    /// Delete the file-map entries `keep` refuses (entries whose events were lost); returns
    /// how many went.
    fn sweep_files(&mut self, keep: &dyn Fn(&FileKey) -> bool) -> usize;
    /// Publish (or with None withdraw) the in-kernel write filter of a classified file.
    fn set_write_filter(
        &mut self,
        _key: FileKey,
        _filter: Option<&snapmon_common::WriteFilter>,
    ) -> Result<(), String> {
        Ok(())
    }
}

#[derive(Default, Debug)]
pub struct MemMaps {
    pub files: HashSet<FileKey>,
    /// The entries of `files` counted in the ordinary share.
    pub ordinary: HashSet<FileKey>,
    pub dirs: HashMap<FileKey, u32>,
    pub prefixes: HashSet<u64>,
    pub leaves: HashSet<u64>,
    pub filters: HashMap<FileKey, snapmon_common::WriteFilter>,
    /// The generations `files` were added with, where known.
    pub generations: HashMap<FileKey, u32>,
    /// Capacity of `files` as the kernel map has one (None: unbounded).
    pub cap: Option<usize>,
    pub reserve: bool,
}

impl WatchMaps for MemMaps {
    fn add_file(
        &mut self,
        key: FileKey,
        ordinary: bool,
        generation: Option<u32>,
    ) -> Result<(), String> {
        if self.files.contains(&key) {
            return Ok(());
        }
        if self.cap.is_some_and(|c| self.files.len() >= c) {
            return Err("watched-files map: full".into());
        }
        self.files.insert(key);
        if let Some(g) = generation {
            self.generations.insert(key, g);
        }
        if ordinary {
            self.ordinary.insert(key);
        }
        Ok(())
    }
    fn remove_file(&mut self, key: FileKey) {
        self.files.remove(&key);
        self.ordinary.remove(&key);
        self.generations.remove(&key);
    }
    fn has_file(&self, key: FileKey) -> bool {
        self.files.contains(&key)
    }
    fn ordinary_entries(&self) -> Option<u64> {
        Some(self.ordinary.len() as u64)
    }
    fn add_dir(&mut self, key: FileKey, flags: u32) -> Result<(), String> {
        *self.dirs.entry(key).or_default() |= flags;
        Ok(())
    }
    fn remove_dir(&mut self, key: FileKey) {
        self.dirs.remove(&key);
    }
    fn add_prefix(&mut self, hash: u64) -> Result<(), String> {
        self.prefixes.insert(hash);
        Ok(())
    }
    fn set_leaf(&mut self, hash: u64, on: bool) -> Result<(), String> {
        if on {
            self.leaves.insert(hash);
        } else {
            self.leaves.remove(&hash);
        }
        Ok(())
    }
    fn set_reserve(&mut self, on: bool) -> Result<(), String> {
        self.reserve = on;
        Ok(())
    }
    fn sweep_files(&mut self, keep: &dyn Fn(&FileKey) -> bool) -> usize {
        let before = self.files.len();
        self.files.retain(|k| keep(k));
        let files = &self.files;
        self.ordinary.retain(|k| files.contains(k));
        before - self.files.len()
    }
    fn set_write_filter(
        &mut self,
        key: FileKey,
        filter: Option<&snapmon_common::WriteFilter>,
    ) -> Result<(), String> {
        match filter {
            Some(f) => self.filters.insert(key, *f),
            None => self.filters.remove(&key),
        };
        Ok(())
    }
}

/// Counts of what a registration put into the filters.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct WatchStats {
    pub roots: usize,
    pub files: usize,
    pub dirs: usize,
    pub skipped: Vec<String>,
    /// Directories not descended into: deeper than the scan depth below their root.
    pub too_deep: usize,
}

/// Limits that keep a registration bounded on a huge or looping tree. The depth is
/// `[agent] scan_depth` (`config::DEFAULT_SCAN_DEPTH` when unset).
pub const MAX_ENTRIES: usize = 60_000;

/// Ordinary files are admitted to the kernel's file map up to here; the last tenth is
/// headroom for images and metadata, so junk files cannot push out a new image. The
/// kernel holds its own inserts to the same share (`snapmon_common::watch_share`).
pub const ORDINARY_LIMIT: usize = snapmon_common::ORDINARY_LIMIT as usize;

/// A gone name's identity is withdrawn from the kernel once its syscall has landed (the
/// hooks report at syscall entry; an unlink refused by the sticky bit must not unwatch).
const LAND: Duration = Duration::from_millis(50);
/// A name a namespace record announced (at syscall entry) that is not there yet is looked at
/// again this often until it is, for at most `NEW_WAIT` (then its syscall failed).
const NEW_RETRY: Duration = Duration::from_millis(2);
const NEW_WAIT: Duration = Duration::from_millis(250);
/// Names awaited at once; past it the oldest is given up (a flood of failing mkdirs).
const MAX_LANDING: usize = 64;

/// While the map is in reserve, names are re-checked on disk this many at a time, this
/// often: unlinks whose events the ring buffer dropped still free their entries.
const AUDIT_BATCH: usize = 4096;
const AUDIT_EVERY: Duration = Duration::from_millis(100);

/// How often a full ordinary share may be swept of entries the agent does not know.
const SHARE_SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Names that get the file map's headroom: images by extension, metadata by store.
#[derive(Default, Debug, Clone)]
pub struct Precious {
    /// Lower-case extensions (`qcow2` …).
    pub exts: Vec<String>,
    /// Extensions of metadata files (libvirt's XML).
    pub meta_exts: Vec<String>,
    /// Stores whose every file is metadata (libvirt, LVM).
    pub meta_roots: Vec<PathBuf>,
}

impl Precious {
    pub fn from_policy(policy: &crate::config::Policy) -> Self {
        use crate::config::StoreKind as K;
        Precious {
            exts: policy
                .detection
                .image_extensions
                .iter()
                .map(|e| e.to_ascii_lowercase())
                .collect(),
            meta_exts: vec!["xml".into()],
            meta_roots: policy
                .stores
                .iter()
                .filter(|s| matches!(s.kind, K::Libvirt | K::Lvm))
                .map(|s| std::fs::canonicalize(&s.path).unwrap_or_else(|_| s.path.clone()))
                .collect(),
        }
    }

    /// The kernel's form of the extensions: `snapmon_common::ext_hash` of each.
    pub fn ext_hashes(&self) -> Vec<u64> {
        self.exts
            .iter()
            .chain(&self.meta_exts)
            .filter(|e| !e.is_empty() && e.len() <= snapmon_common::PRECIOUS_EXT_LEN)
            .map(|e| snapmon_common::ext_hash(e.as_bytes()))
            .collect()
    }

    /// Is every file below directory `d` metadata (a libvirt or LVM store)?
    pub fn meta_dir(&self, d: &Path) -> bool {
        self.meta_roots.iter().any(|r| d.starts_with(r))
    }

    pub fn admits(&self, p: &Path) -> bool {
        let ext = p
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        ext.is_some_and(|e| self.exts.contains(&e) || self.meta_exts.contains(&e))
            || self.meta_roots.iter().any(|r| p.starts_with(r))
    }
}

/// Files the kernel's file map could not take, by cause (reported in `lost` records).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WatchLoss {
    /// Ordinary files refused past [`ORDINARY_LIMIT`], or any file the full map refused.
    pub watch_full: u64,
}

/// The userspace half of the watch set.
#[derive(Default)]
pub struct WatchSet {
    /// Canonical roots (files and directories).
    pub roots: Vec<PathBuf>,
    /// Identity → its known names, the current one last (hard links have more than one).
    names: HashMap<FileKey, Vec<PathBuf>>,
    /// Identity → when (kernel boot ns) its current file was created: a record from before
    /// is about an earlier file that had the inode number ([`WatchSet::stale`]).
    born: HashMap<FileKey, u64>,
    /// Name → identities known by it: the index unlinks and renames look up (ordered, so
    /// a directory's descendants are one range).
    by_path: BTreeMap<PathBuf, Vec<FileKey>>,
    pub dirs: HashSet<FileKey>,
    /// Identities in the kernel's file map, as far as the agent knows.
    files: HashSet<FileKey>,
    /// The kernel leaves new files to the agent (`runtime::WATCH_RESERVE` set).
    reserve: bool,
    pub precious: Precious,
    /// Identities whose last name went, with that name: withdrawn once the syscall landed.
    gone: VecDeque<(Instant, FileKey, PathBuf)>,
    /// Names announced before their syscall made them (mkdir, link, rename target): the
    /// agent may read the record before the kernel has made the name.
    landing: VecDeque<(Instant, PathBuf)>,
    /// When every awaited name is looked at next; in between only the newest is.
    landing_at: Option<Instant>,
    loss: WatchLoss,
    warned: bool,
    /// While in reserve: where the audit of names resumes, and when it runs next.
    audit_from: Option<PathBuf>,
    audit_at: Option<Instant>,
    /// When the ordinary share may next be swept of entries the agent never heard of.
    share_sweep_at: Option<Instant>,
    pub stats: WatchStats,
    /// Directory levels registered below a root or a new directory (None: the default).
    pub scan_depth: Option<usize>,
    /// Admitting an alias (loop node, overlay inode), not a file of its own.
    aliasing: bool,
    /// Watched image and metadata names by their last component's hash: how many.
    leaves: HashMap<u64, u32>,
    /// Leaf hashes to put into (true) or take out of the kernel's set.
    leaf_changes: Vec<(u64, bool)>,
    /// The same names by last component: `gone_by_leaf` looks at these, not at every name.
    by_leaf: HashMap<std::ffi::OsString, Vec<PathBuf>>,
}

/// Names looked at for one `gone_by_leaf`.
const GONE_BY_LEAF: usize = 64;

/// Does `p` name identity `k` on disk now?
fn resolves(p: &Path, k: FileKey) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| key_for(p, &m) == k)
}

impl WatchSet {
    /// Register `path` (file, dir or device). Missing paths are reported, not fatal.
    pub fn add_root(&mut self, path: &Path, maps: &mut dyn WatchMaps) -> Result<(), String> {
        let canon = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let md = std::fs::metadata(&canon).map_err(|e| format!("{}: {e}", canon.display()))?;
        self.stats.roots += 1;
        // Hash both spellings so either absolute path matches in the kernel.
        for p in [normalize(path), canon.clone()] {
            if p.is_absolute() {
                maps.add_prefix(fnv1a(p.as_os_str().as_bytes()))?;
            }
        }
        // Ancestors: relative multi-component paths starting there may reach the root.
        let mut anc = canon.parent();
        while let Some(a) = anc {
            if let Ok(m) = std::fs::metadata(a) {
                let k = key_for(a, &m);
                maps.add_dir(k, dir_flags::ANCESTOR)?;
                if !self.names.contains_key(&k) {
                    self.add_name(k, a);
                }
            }
            anc = a.parent();
        }
        self.roots.push(canon.clone());
        if md.is_dir() {
            self.add_tree(&canon, maps, 0)
        } else {
            self.add_file(&canon, &md, maps);
            Ok(())
        }
    }

    /// Watch a file under `p`; a map that cannot take it is counted as loss, not an error.
    fn add_file(&mut self, p: &Path, md: &std::fs::Metadata, maps: &mut dyn WatchMaps) {
        let key = key_for(p, md);
        if self.admit(key, p, maps) {
            self.add_name(key, p);
            self.stats.files += 1;
        }
    }

    /// Put `k` (named `p`) into the kernel's file map unless the map keeps its headroom
    /// from it or is full; either is loss, counted and said once.
    fn admit(&mut self, k: FileKey, p: &Path, maps: &mut dyn WatchMaps) -> bool {
        if self.files.contains(&k) {
            return true;
        }
        let precious = self.precious.admits(p);
        // In already (the kernel took it at create, within the share): keep it.
        if maps.has_file(k) && self.files.len() < ORDINARY_LIMIT {
            self.files.insert(k);
            self.update_reserve(maps);
            if precious && !self.aliasing {
                maps.note_image(k);
            }
            return true;
        }
        let ok = if !precious
            && (self.files.len() >= ORDINARY_LIMIT || self.ordinary_share_full(maps))
        {
            Err("kept for images and metadata".to_string())
        } else {
            // An alias is admitted under the image's name: not the node's generation.
            let generation = (!self.aliasing)
                .then(|| crate::paths::generation_of(p, k))
                .flatten();
            maps.add_file(k, !precious, generation).or_else(|e| {
                // Full although we count less: entries whose events the ring buffer lost.
                // Drop those the agent does not know, then try once more.
                let files = &self.files;
                if maps.sweep_files(&|x| files.contains(x)) > 0 {
                    maps.add_file(k, !precious, generation)
                } else {
                    Err(e)
                }
            })
        };
        match ok {
            Ok(()) => {
                self.files.insert(k);
                self.update_reserve(maps);
                if precious && !self.aliasing {
                    maps.note_image(k);
                }
                true
            }
            Err(e) => {
                // The kernel may have taken it at create: withdraw, so the count stays true.
                maps.remove_file(k);
                self.loss.watch_full += 1;
                if !self.warned {
                    self.warned = true;
                    eprintln!(
                        "snapmon: watched-files map: {} not watched ({e}); further refusals are counted in `lost` records (watch_full)",
                        p.display()
                    );
                }
                false
            }
        }
    }

    fn update_reserve(&mut self, maps: &mut dyn WatchMaps) {
        let on = self.files.len() >= ORDINARY_LIMIT;
        if on != self.reserve && maps.set_reserve(on).is_ok() {
            self.reserve = on;
            self.audit_at = on.then(Instant::now);
        }
    }

    /// Withdraw `k` from the kernel's file map.
    fn unwatch(&mut self, k: FileKey, maps: &mut dyn WatchMaps) {
        if self.files.remove(&k) {
            maps.remove_file(k);
            self.update_reserve(maps);
        }
    }

    /// `p` names `k` now (the current name).
    fn add_name(&mut self, k: FileKey, p: &Path) {
        let names = self.names.entry(k).or_default();
        if let Some(i) = names.iter().position(|n| n == p) {
            let n = names.remove(i);
            names.push(n);
        } else {
            names.push(p.to_path_buf());
            self.index(p, k);
        }
    }

    /// `by_path` gets `p` → `k` (the kernel's leaf set the name, if it is new there).
    fn index(&mut self, p: &Path, k: FileKey) {
        let new = !self.by_path.contains_key(p);
        let keys = self.by_path.entry(p.to_path_buf()).or_default();
        if !keys.contains(&k) {
            keys.push(k);
        }
        if new {
            self.leaf(p, true);
        }
    }

    /// Count a watched image or metadata name in (or out of) the kernel's leaf set.
    fn leaf(&mut self, p: &Path, added: bool) {
        let Some(name) = p.file_name().filter(|_| self.precious.admits(p)) else {
            return;
        };
        let h = snapmon_common::leaf_hash(name.as_bytes());
        if added {
            self.by_leaf
                .entry(name.to_os_string())
                .or_default()
                .push(p.to_path_buf());
        } else if let Some(named) = self.by_leaf.get_mut(name) {
            named.retain(|x| x != p);
            if named.is_empty() {
                self.by_leaf.remove(name);
            }
        }
        let n = self.leaves.entry(h).or_default();
        let was = *n > 0;
        if added {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
        }
        let is = *n > 0;
        if !is {
            self.leaves.remove(&h);
        }
        if was != is {
            self.leaf_changes.push((h, is));
        }
    }

    /// Tell the kernel the leaf names that came and went since the last call.
    pub fn publish_leaves(&mut self, maps: &mut dyn WatchMaps) {
        if self.leaf_changes.is_empty() {
            return;
        }
        for (h, on) in std::mem::take(&mut self.leaf_changes) {
            if let Err(e) = maps.set_leaf(h, on) {
                self.loss.watch_full += 1;
                if !self.warned {
                    self.warned = true;
                    eprintln!(
                        "snapmon: {e}: a name of a watched image is not matched through symlinked or bind-mounted stores; further refusals are counted in `lost` records (watch_full)"
                    );
                }
            }
        }
    }

    /// Watched image and metadata names whose last component is `leaf` and that no longer
    /// name their file: what an unlink or rename through another path to the store took.
    /// Looked up by that component: a flood of junk names that end like a watched one costs
    /// a map lookup each, however many files are watched.
    pub fn gone_by_leaf(&self, leaf: &std::ffi::OsStr) -> Vec<(FileKey, PathBuf)> {
        self.by_leaf
            .get(leaf)
            .into_iter()
            .flatten()
            .flat_map(|p| {
                self.by_path
                    .get(p)
                    .into_iter()
                    .flatten()
                    .map(move |k| (*k, p))
            })
            .take(GONE_BY_LEAF)
            .filter(|(k, p)| !resolves(p, *k))
            .map(|(k, p)| (k, p.clone()))
            .collect()
    }

    /// `p` no longer names `k`; true when `k` has no name left.
    fn remove_name(&mut self, k: FileKey, p: &Path) -> bool {
        if let Some(keys) = self.by_path.get_mut(p) {
            keys.retain(|x| *x != k);
            if keys.is_empty() {
                self.by_path.remove(p);
                self.leaf(p, false);
            }
        }
        let Some(names) = self.names.get_mut(&k) else {
            return false;
        };
        names.retain(|n| n != p);
        if names.is_empty() {
            self.names.remove(&k);
            self.born.remove(&k);
            return true;
        }
        false
    }

    /// `k`'s current file was created at `ts_ns` (kernel boot time).
    pub fn born(&mut self, k: FileKey, ts_ns: u64) {
        let b = self.born.entry(k).or_insert(ts_ns);
        *b = (*b).max(ts_ns);
    }

    /// Is a record taken at `ts_ns` about `k` from before its current file was created?
    /// The two ring lanes are read out of order across actors: a late record of a deleted
    /// junk file whose inode number an image now has must not rename the image, drop its
    /// shadow or be judged against its bytes.
    pub fn stale(&self, k: &FileKey, ts_ns: u64) -> bool {
        self.born.get(k).is_some_and(|b| ts_ns < *b)
    }

    /// `k` lost its last name `p` (unlink, rename away or over): withdraw it once landed.
    fn lost_name(&mut self, k: FileKey, p: PathBuf) {
        self.gone.push_back((Instant::now(), k, p));
    }

    /// Register a directory and everything below it (bounded).
    pub fn add_tree(
        &mut self,
        dir: &Path,
        maps: &mut dyn WatchMaps,
        depth: usize,
    ) -> Result<(), String> {
        let md = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let key = key_for(dir, &md);
        if !self.dirs.insert(key) {
            return Ok(()); // already known (bind mount or loop)
        }
        let meta = if self.precious.meta_dir(dir) {
            dir_flags::METADATA
        } else {
            0
        };
        maps.add_dir(key, dir_flags::WATCHED | meta)?;
        self.add_name(key, dir);
        self.stats.dirs += 1;
        let max = self.scan_depth.unwrap_or(crate::config::DEFAULT_SCAN_DEPTH);
        if depth >= max {
            self.stats.too_deep += 1;
            self.stats
                .skipped
                .push(format!("{}: deeper than {max} levels", dir.display()));
            return Ok(());
        }
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) => {
                self.stats.skipped.push(format!("{}: {e}", dir.display()));
                return Ok(());
            }
        };
        for ent in rd.flatten() {
            if self.stats.files + self.stats.dirs >= MAX_ENTRIES {
                self.stats.skipped.push(format!(
                    "{}: more than {MAX_ENTRIES} entries",
                    dir.display()
                ));
                break;
            }
            let p = ent.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                self.add_tree(&p, maps, depth + 1)?;
            } else if !m.file_type().is_symlink() {
                self.add_file(&p, &m, maps);
            }
        }
        Ok(())
    }

    /// Is `p` (absolute, normalized) inside a watched root?
    pub fn covers(&self, p: &Path) -> bool {
        self.roots.iter().any(|r| p.starts_with(r))
    }

    /// A path appeared (create, mkdir, rename target): watch it if it lies in a root.
    pub fn observe_new_path(&mut self, p: &Path, maps: &mut dyn WatchMaps) -> Option<FileKey> {
        if !self.covers(p) {
            return None;
        }
        let md = std::fs::symlink_metadata(p).ok()?;
        if md.is_dir() {
            let _ = self.add_tree(p, maps, 0);
        } else if !md.file_type().is_symlink() {
            self.add_file(p, &md, maps);
        }
        Some(key_for(p, &md))
    }

    /// [`WatchSet::observe_new_path`] for a name a syscall is making: the hooks report at
    /// entry, so a name not there yet is looked at again as the syscall lands
    /// ([`WatchSet::settle`]). Without this a directory made while the agent ran could stay
    /// unwatched for good: relative and LSM-seen changes inside it went unreported.
    pub fn observe_landing(&mut self, p: &Path, maps: &mut dyn WatchMaps) -> Option<FileKey> {
        let k = self.observe_new_path(p, maps);
        if k.is_none() && self.covers(p) && !self.landing.iter().any(|(_, q)| q == p) {
            if self.landing.len() >= MAX_LANDING {
                self.landing.pop_front();
            }
            self.landing.push_back((Instant::now(), p.to_path_buf()));
        }
        k
    }

    /// Awaited names that are there now: watched, and returned (overlays alias them).
    /// This runs before each record is handled, so its cost is bounded: all names every
    /// `NEW_RETRY`, else only the newest, whose syscall the record in hand most likely
    /// follows (a later syscall of the thread that made it).
    fn land_new(&mut self, now: Instant, maps: &mut dyn WatchMaps) -> Vec<(FileKey, PathBuf)> {
        let all = self.landing_at.is_none_or(|t| now >= t);
        let from = if all { 0 } else { self.landing.len() - 1 };
        if all {
            self.landing_at = Some(now + NEW_RETRY);
        }
        let mut made = Vec::new();
        for (t, p) in self.landing.split_off(from) {
            match self.observe_new_path(&p, maps) {
                Some(k) => made.push((k, p)),
                None if now < t + NEW_WAIT => self.landing.push_back((t, p)),
                None => {}
            }
        }
        made
    }

    pub fn path_of(&self, key: &FileKey) -> Option<&PathBuf> {
        self.names.get(key).and_then(|n| n.last())
    }

    /// A name for `key` found on disk, in the watched directories, when the agent never
    /// heard of it (its create was among the records a flood dropped). Reads directory
    /// entries (their inode numbers, no stat but for a match), at most `budget` of them.
    pub fn find_name(&self, key: &FileKey, budget: usize) -> Option<PathBuf> {
        use std::os::unix::fs::DirEntryExt as _;
        let mut left = budget;
        for dir in self.dirs.iter().filter_map(|d| self.path_of(d)) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                if left == 0 {
                    return None;
                }
                left -= 1;
                if e.ino() != key.ino {
                    continue;
                }
                let p = e.path();
                if std::fs::symlink_metadata(&p).is_ok_and(|md| key_for(&p, &md) == *key) {
                    return Some(p);
                }
            }
        }
        None
    }

    /// The identity last known by the name `p`.
    pub fn key_at(&self, p: &Path) -> Option<FileKey> {
        self.by_path.get(p).and_then(|k| k.last()).copied()
    }

    /// Every known name that begins with the bytes `head` (a path the kernel cut), with its
    /// identity: a range of the path index, not a scan, since paths sharing a byte prefix
    /// are contiguous in component order below the prefix's last whole directory.
    pub fn named_with_prefix<'a>(
        &'a self,
        head: &'a [u8],
    ) -> impl Iterator<Item = (&'a FileKey, &'a PathBuf)> + 'a {
        use std::os::unix::ffi::OsStrExt as _;
        let start = Path::new(std::ffi::OsStr::from_bytes(head));
        // Cut at a slash: the directory's subtree (itself excluded by the byte test). Cut
        // inside a name: the names that begin with it and their subtrees, one block.
        let at_slash = head.ends_with(b"/");
        self.by_path
            .range::<Path, _>((std::ops::Bound::Included(start), std::ops::Bound::Unbounded))
            .take_while(move |(p, _)| {
                if at_slash {
                    p.starts_with(start)
                } else {
                    p.as_os_str().as_bytes().starts_with(head)
                }
            })
            .filter(move |(p, _)| p.as_os_str().as_bytes().starts_with(head))
            .flat_map(|(p, keys)| keys.iter().map(move |k| (k, p)))
    }

    /// Watched images and metadata files below `dir` (every one when None) whose current
    /// name no longer names them on disk: what an unlink or rename the kernel dropped
    /// (`lost::NAMESPACE_DROPPED`) took unheard. Looks at no more than `budget` names.
    pub fn unheard_gone(&self, dir: Option<&Path>, budget: usize) -> Vec<(FileKey, PathBuf)> {
        let names: Box<dyn Iterator<Item = (&PathBuf, &Vec<FileKey>)>> = match dir {
            Some(d) => Box::new(
                self.by_path
                    .range::<Path, _>((std::ops::Bound::Included(d), std::ops::Bound::Unbounded))
                    .take_while(move |(p, _)| p.starts_with(d)),
            ),
            None => Box::new(self.by_path.iter()),
        };
        names
            .filter(|(p, _)| self.precious.admits(p))
            .flat_map(|(p, keys)| keys.iter().map(move |k| (*k, p)))
            // Only its current name: an older one of a hard link may be gone by rights.
            .filter(|(k, p)| self.path_of(k) == Some(*p))
            .take(budget)
            .filter(|(k, p)| !resolves(p, *k))
            .map(|(k, p)| (k, p.clone()))
            .collect()
    }

    /// Every known identity with its current name.
    pub fn known(&self) -> impl Iterator<Item = (&FileKey, &PathBuf)> {
        self.names
            .iter()
            .filter_map(|(k, n)| n.last().map(|p| (k, p)))
    }

    /// Identities in the kernel's file map, as the agent counts them.
    pub fn kernel_files(&self) -> usize {
        self.files.len()
    }

    /// Loss since the last call.
    pub fn take_loss(&mut self) -> WatchLoss {
        std::mem::take(&mut self.loss)
    }

    /// A name went away (unlink/rmdir): drop every identity known by it; one left with no
    /// name is withdrawn from the kernel once the syscall landed ([`WatchSet::settle`]).
    pub fn forget_path(&mut self, p: &Path) {
        let Some(keys) = self.by_path.get(p).cloned() else {
            return;
        };
        for k in keys {
            if self.remove_name(k, p) {
                self.lost_name(k, p.to_path_buf());
            }
        }
    }

    /// The kernel saw `k` opened under `p` (created, or written): its current name, and
    /// watched if the map admits it. Inode numbers are reused after unlink: other names
    /// it had are kept only while they still name it (hard links).
    pub fn seen(&mut self, k: FileKey, p: PathBuf, maps: &mut dyn WatchMaps) {
        self.seen_opened(k, p, false, maps)
    }

    /// [`WatchSet::seen`] for an open the kernel judged: `refused` when its hook refused
    /// the file a watch and counted that as loss (`open_watch::REFUSED`), so the agent
    /// neither counts it again nor takes room the kernel kept for images and metadata.
    pub fn seen_opened(&mut self, k: FileKey, p: PathBuf, refused: bool, maps: &mut dyn WatchMaps) {
        if self.path_of(&k) != Some(&p) {
            let stale: Vec<PathBuf> = self
                .names
                .get(&k)
                .into_iter()
                .flatten()
                .filter(|n| **n != p && !resolves(n, k))
                .cloned()
                .collect();
            for n in stale {
                self.remove_name(k, &n);
            }
        }
        // A refused file keeps its name (events still say what was made), not its watch.
        // What the kernel refused an image gets a second chance here (the map may have
        // been swept since); ordinary files stay refused, counted once, in the kernel.
        if self.covers(&p) && !self.dirs.contains(&k) && (!refused || self.precious.admits(&p)) {
            self.admit(k, &p, maps);
        }
        self.add_name(k, &p);
    }

    /// Is the ordinary share full as the kernel counts it too (its inserts the agent has not
    /// heard of yet)? Full by the count although the agent knows fewer: entries whose unlink
    /// the ring buffer lost hold room. They are swept out first, at most once per interval
    /// (a flood in flight refills it, and a sweep is a walk of the whole map).
    fn ordinary_share_full(&mut self, maps: &mut dyn WatchMaps) -> bool {
        let full = |maps: &dyn WatchMaps| {
            maps.ordinary_entries()
                .is_some_and(|n| n >= ORDINARY_LIMIT as u64)
        };
        if !full(maps) {
            return false;
        }
        let now = Instant::now();
        if self.share_sweep_at.is_none_or(|t| now >= t) {
            self.share_sweep_at = Some(now + SHARE_SWEEP_EVERY);
            let files = &self.files;
            maps.sweep_files(&|x| files.contains(x));
        }
        full(maps)
    }

    /// Watch a device node that aliases a watched file (a loop device over an image) by its
    /// own identity, named `p` when its name is known. Outside the roots by nature, so it is
    /// admitted here rather than by [`WatchSet::seen`]. False when the map refused it.
    pub fn watch_alias(
        &mut self,
        k: FileKey,
        p: Option<&Path>,
        image: &Path,
        maps: &mut dyn WatchMaps,
    ) -> bool {
        // The image's name decides the headroom: the alias carries the image's bytes.
        self.aliasing = true;
        let ok = self.admit(k, image, maps);
        self.aliasing = false;
        if !ok {
            return false;
        }
        if let Some(p) = p {
            self.add_name(k, p);
        }
        true
    }

    /// Stop watching an alias node (the loop device was detached or given another file).
    pub fn unwatch_alias(&mut self, k: FileKey, maps: &mut dyn WatchMaps) {
        maps.remove_rdev_alias(k);
        for n in self.names.get(&k).cloned().unwrap_or_default() {
            self.remove_name(k, &n);
        }
        self.unwatch(k, maps);
    }

    pub fn learn(&mut self, key: FileKey, p: PathBuf) {
        self.add_name(key, &p);
    }

    /// A rename or link put identity `key` at `p` (the classifier saw it there): watch it
    /// under that name. After a rename no other identity keeps the name; a link adds one.
    pub fn placed(&mut self, p: &Path, key: (u32, u64), link: bool, maps: &mut dyn WatchMaps) {
        if !self.covers(p) || !std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()) {
            return;
        }
        let k = FileKey {
            dev: key.0,
            _pad: 0,
            ino: key.1,
        };
        if !link {
            for other in self.by_path.get(p).cloned().unwrap_or_default() {
                if other != k && self.remove_name(other, p) {
                    self.lost_name(other, p.to_path_buf());
                }
            }
        }
        if !self.admit(k, p, maps) {
            return;
        }
        match self.names.get_mut(&k) {
            // A new link is another name; the current one stays what it was.
            Some(names) if link => {
                if !names.iter().any(|n| n == p) {
                    names.insert(0, p.to_path_buf());
                    self.index(p, k);
                }
            }
            _ => self.add_name(k, p),
        }
    }

    /// A rename moved `from` to `to`: re-key every known name under it (one range of the
    /// index). What the target name held, and what left the watched roots, loses that name.
    pub fn renamed(&mut self, from: &Path, to: &Path) {
        if from == to {
            return;
        }
        // A replaced target (a file, or an empty directory) is no longer named `to`.
        for k in self.by_path.get(to).cloned().unwrap_or_default() {
            if self.remove_name(k, to) {
                self.lost_name(k, to.to_path_buf());
            }
        }
        let under: Vec<PathBuf> = self
            .by_path
            .range::<Path, _>((std::ops::Bound::Included(from), std::ops::Bound::Unbounded))
            .take_while(|(p, _)| p.starts_with(from))
            .map(|(p, _)| p.clone())
            .collect();
        let inside = self.covers(to);
        for old in under {
            let Some(keys) = self.by_path.remove(&old) else {
                continue;
            };
            self.leaf(&old, false);
            let rest = old.strip_prefix(from).unwrap_or(Path::new(""));
            let new = if rest.as_os_str().is_empty() {
                to.to_path_buf()
            } else {
                to.join(rest)
            };
            for k in keys {
                let Some(names) = self.names.get_mut(&k) else {
                    continue;
                };
                names.retain(|n| *n != old);
                if inside {
                    names.push(new.clone());
                    self.index(&new, k);
                } else if names.is_empty() {
                    // Moved out of every root: no longer ours to watch.
                    self.names.remove(&k);
                    self.lost_name(k, old.clone());
                }
            }
        }
    }

    /// When the next gone name is due to be judged.
    pub fn next_settle(&self) -> Option<Instant> {
        let gone = self.gone.front().map(|(t, _, _)| *t + LAND);
        let landing = (!self.landing.is_empty()).then(|| {
            self.landing_at
                .unwrap_or_else(|| Instant::now() + NEW_RETRY)
        });
        [gone, self.audit_at, landing].into_iter().flatten().min()
    }

    /// One batch of the audit: names that no longer name their identity on disk are
    /// forgotten (their unlink or rename was lost), and their entries freed.
    fn audit(&mut self, now: Instant, maps: &mut dyn WatchMaps) {
        use std::ops::Bound::{Excluded, Unbounded};
        if self.audit_at.is_none_or(|t| now < t) {
            return;
        }
        self.audit_at = Some(now + AUDIT_EVERY);
        let start = match &self.audit_from {
            Some(p) => Excluded(p.as_path()),
            None => Unbounded,
        };
        let batch: Vec<(PathBuf, FileKey)> = self
            .by_path
            .range::<Path, _>((start, Unbounded))
            .take(AUDIT_BATCH)
            .flat_map(|(p, ks)| ks.iter().map(move |k| (p.clone(), *k)))
            .collect();
        self.audit_from = batch.last().map(|(p, _)| p.clone());
        for (p, k) in batch {
            if self.files.contains(&k) && !resolves(&p, k) && self.remove_name(k, &p) {
                self.unwatch(k, maps);
            }
        }
    }

    /// Judge gone names whose syscall landed: an identity still at its old name (the
    /// unlink or rename failed) gets it back; one without a name leaves the kernel's map.
    /// Returns the awaited names that are made now, watched.
    pub fn settle(&mut self, now: Instant, maps: &mut dyn WatchMaps) -> Vec<(FileKey, PathBuf)> {
        self.publish_leaves(maps);
        let made = if self.landing.is_empty() {
            Vec::new()
        } else {
            self.land_new(now, maps)
        };
        self.audit(now, maps);
        while let Some((t, _, _)) = self.gone.front() {
            if now < *t + LAND {
                break;
            }
            let Some((_, k, p)) = self.gone.pop_front() else {
                break;
            };
            if self.names.contains_key(&k) {
                continue; // named again meanwhile
            }
            if resolves(&p, k) {
                self.add_name(k, &p);
            } else {
                self.unwatch(k, maps);
            }
        }
        made
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths::key_of;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("snapmon-watch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// The hooks report a mkdir at syscall entry: the agent can read the record before the
    /// kernel made the directory (seen in a 6.1 guest, where relative renames inside such a
    /// directory then went unseen for good). The name is looked at again as it lands.
    #[test]
    fn a_directory_announced_before_it_exists_is_watched_once_made() {
        let d = tmpdir("landing");
        let mut maps = MemMaps::default();
        let mut ws = WatchSet::default();
        ws.add_root(&d, &mut maps).unwrap();
        let sub = d.join("sub");
        assert_eq!(ws.observe_landing(&sub, &mut maps), None);
        let before = ws.next_settle().expect("a retry is due");
        assert!(before <= Instant::now() + NEW_RETRY);
        // Not made yet: still awaited.
        assert!(ws.settle(Instant::now(), &mut maps).is_empty());
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("x.qcow2"), b"x").unwrap();
        let made = ws.settle(Instant::now(), &mut maps);
        let k = key_of(&std::fs::metadata(&sub).unwrap());
        assert_eq!(made, vec![(k, sub.clone())]);
        assert!(maps.dirs.contains_key(&k), "the kernel's dir map has it");
        let f = key_of(&std::fs::metadata(sub.join("x.qcow2")).unwrap());
        assert!(maps.files.contains(&f), "and what was made in it");
        assert!(ws.settle(Instant::now(), &mut maps).is_empty());
        // A name never made (the syscall failed) is given up after NEW_WAIT.
        let never = d.join("never");
        assert_eq!(ws.observe_landing(&never, &mut maps), None);
        assert!(ws.settle(Instant::now() + NEW_WAIT, &mut maps).is_empty());
        assert!(ws.landing.is_empty());
        assert!(ws
            .next_settle()
            .is_none_or(|t| t > Instant::now() + NEW_RETRY));
        // Outside every root: never awaited.
        assert_eq!(
            ws.observe_landing(Path::new("/elsewhere/x"), &mut maps),
            None
        );
        assert!(ws.landing.is_empty());
        // The cost before each record is bounded: between full passes only the newest
        // awaited name is looked at.
        let mut ws = WatchSet::default();
        ws.add_root(&d, &mut maps).unwrap();
        let (a, b) = (d.join("a"), d.join("b"));
        ws.observe_landing(&a, &mut maps);
        ws.observe_landing(&b, &mut maps);
        let t0 = Instant::now();
        assert!(
            ws.settle(t0, &mut maps).is_empty(),
            "a full pass, nothing made"
        );
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        let made = |v: Vec<(FileKey, PathBuf)>| v.into_iter().map(|(_, p)| p).collect::<Vec<_>>();
        let between = made(ws.settle(t0 + NEW_RETRY / 2, &mut maps));
        assert_eq!(between, vec![b.clone()], "only the newest between passes");
        let next = made(ws.settle(t0 + NEW_RETRY, &mut maps));
        assert_eq!(next, vec![a.clone()], "every name at the next full pass");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// What the scan watches carries its inode generation where the filesystem tells it, so
    /// the kernel can tell the file from a later one with its number.
    #[test]
    fn the_scan_watches_files_with_their_inode_generation() {
        let d = tmpdir("generation");
        std::fs::write(d.join("a.qcow2"), b"x").unwrap();
        let mut maps = MemMaps::default();
        let mut ws = WatchSet::default();
        ws.add_root(&d, &mut maps).unwrap();
        let p = d.join("a.qcow2");
        let key = key_of(&std::fs::metadata(&p).unwrap());
        assert!(maps.files.contains(&key));
        assert_eq!(
            maps.generations.get(&key).copied(),
            crate::paths::generation_of(&p, key)
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn registers_tree_ancestors_and_prefix_hashes() {
        let d = tmpdir("tree");
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("a.qcow2"), b"x").unwrap();
        std::fs::write(d.join("sub/b.qcow2"), b"y").unwrap();
        let mut maps = MemMaps::default();
        let mut ws = WatchSet::default();
        ws.add_root(&d, &mut maps).unwrap();
        let key = key_of(&std::fs::metadata(d.join("sub/b.qcow2")).unwrap());
        assert!(maps.files.contains(&key));
        assert_eq!(ws.path_of(&key).unwrap(), &d.join("sub/b.qcow2"));
        let dkey = key_of(&std::fs::metadata(&d).unwrap());
        assert_eq!(maps.dirs[&dkey] & dir_flags::WATCHED, dir_flags::WATCHED);
        let root = key_of(&std::fs::metadata("/").unwrap());
        assert_eq!(maps.dirs[&root], dir_flags::ANCESTOR);
        assert!(maps.prefixes.contains(&fnv1a(d.as_os_str().as_bytes())));
        assert!(ws.covers(&d.join("new")));
        assert!(!ws.covers(Path::new("/etc/passwd")));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn trees_deeper_than_sixteen_levels_are_registered_to_the_scan_depth() {
        let d = tmpdir("deep");
        let mut leaf = d.clone();
        for i in 0..20 {
            leaf = leaf.join(format!("l{i}"));
        }
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::write(leaf.join("vm.qcow2"), b"x").unwrap();
        let key = key_of(&std::fs::metadata(leaf.join("vm.qcow2")).unwrap());
        let mut maps = MemMaps::default();
        let mut ws = WatchSet::default();
        ws.add_root(&d, &mut maps).unwrap();
        assert!(maps.files.contains(&key));
        assert_eq!((ws.stats.too_deep, ws.stats.skipped.len()), (0, 0));
        // A lower depth is honoured, and counted where the agent warns from.
        let mut maps = MemMaps::default();
        let mut ws = WatchSet {
            scan_depth: Some(10),
            ..Default::default()
        };
        ws.add_root(&d, &mut maps).unwrap();
        assert!(!maps.files.contains(&key));
        assert_eq!(ws.stats.too_deep, 1);
        assert!(ws.stats.skipped[0].contains("deeper than 10 levels"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn missing_root_is_an_error_not_a_panic() {
        let mut ws = WatchSet::default();
        let e = ws
            .add_root(Path::new("/nonexistent/snapmon"), &mut MemMaps::default())
            .unwrap_err();
        assert!(e.contains("/nonexistent/snapmon"));
    }

    #[test]
    fn normalizes_and_tracks_renames() {
        assert_eq!(normalize(Path::new("/a/./b//../c")), PathBuf::from("/a/c"));
        assert_eq!(normalize(Path::new("/../x")), PathBuf::from("/x"));
        let mut ws = over_s();
        let k = FileKey {
            dev: 1,
            _pad: 0,
            ino: 2,
        };
        ws.learn(k, PathBuf::from("/s/dir/f"));
        ws.renamed(Path::new("/s/dir"), Path::new("/s/moved"));
        assert_eq!(ws.path_of(&k).unwrap(), Path::new("/s/moved/f"));
    }

    fn fk(ino: u64) -> FileKey {
        FileKey {
            dev: 7,
            _pad: 0,
            ino,
        }
    }

    /// A watch set over the (not necessarily existing) root `/s`.
    fn over_s() -> WatchSet {
        WatchSet {
            roots: vec![PathBuf::from("/s")],
            ..Default::default()
        }
    }

    #[test]
    fn a_record_from_before_an_inode_was_reused_is_stale_and_renames_nothing() {
        let mut ws = over_s();
        let mut maps = MemMaps::default();
        // Junk n1 had inode 9 and went; the image created at t=200 has it now. The junk's
        // create (t=100) is read afterwards, from the other ring lane.
        ws.seen(fk(9), PathBuf::from("/s/vm.qcow2"), &mut maps);
        ws.born(fk(9), 200);
        assert!(ws.stale(&fk(9), 100));
        assert!(!ws.stale(&fk(9), 200) && !ws.stale(&fk(9), 300));
        assert!(!ws.stale(&fk(10), 100), "no birth known: nothing is stale");
        // Once the image's last name goes, so does what it knew of its birth.
        ws.forget_path(Path::new("/s/vm.qcow2"));
        assert!(!ws.stale(&fk(9), 100));
    }

    #[test]
    fn a_directory_rename_rekeys_its_descendants_only() {
        let mut ws = over_s();
        let mut maps = MemMaps::default();
        for (i, p) in [
            "/s/dir",
            "/s/dir/a",
            "/s/dir/sub/b",
            "/s/dir2/c",
            "/s/dir.x",
        ]
        .iter()
        .enumerate()
        {
            ws.seen(fk(i as u64 + 1), PathBuf::from(p), &mut maps);
        }
        ws.renamed(Path::new("/s/dir"), Path::new("/s/moved"));
        assert_eq!(ws.path_of(&fk(1)).unwrap(), Path::new("/s/moved"));
        assert_eq!(ws.path_of(&fk(2)).unwrap(), Path::new("/s/moved/a"));
        assert_eq!(ws.path_of(&fk(3)).unwrap(), Path::new("/s/moved/sub/b"));
        // Siblings that share the prefix as a string are not under it.
        assert_eq!(ws.path_of(&fk(4)).unwrap(), Path::new("/s/dir2/c"));
        assert_eq!(ws.path_of(&fk(5)).unwrap(), Path::new("/s/dir.x"));
        // The index follows: lookups by the new names work, the old names are gone.
        assert_eq!(ws.key_at(Path::new("/s/moved/sub/b")), Some(fk(3)));
        assert_eq!(ws.key_at(Path::new("/s/dir/sub/b")), None);
        assert_eq!(ws.key_at(Path::new("/s/dir2/c")), Some(fk(4)));
        // Nothing left the watched roots: nothing is withdrawn.
        ws.settle(Instant::now() + LAND, &mut maps);
        assert_eq!(maps.files.len(), 5);
    }

    #[test]
    fn a_rename_out_of_the_roots_or_over_a_name_withdraws_what_lost_its_name() {
        let mut ws = over_s();
        let mut maps = MemMaps::default();
        ws.seen(fk(1), PathBuf::from("/s/d/a.qcow2"), &mut maps);
        ws.seen(fk(2), PathBuf::from("/s/b.qcow2"), &mut maps);
        ws.seen(fk(3), PathBuf::from("/s/c.qcow2"), &mut maps);
        ws.renamed(Path::new("/s/d"), Path::new("/elsewhere/d"));
        ws.renamed(Path::new("/s/c.qcow2"), Path::new("/s/b.qcow2"));
        assert_eq!(ws.path_of(&fk(1)), None);
        assert_eq!(ws.key_at(Path::new("/s/b.qcow2")), Some(fk(3)));
        assert_eq!(ws.path_of(&fk(2)), None);
        // Withdrawn only once the syscalls had time to land (the names do not resolve).
        ws.settle(Instant::now(), &mut maps);
        assert_eq!(maps.files.len(), 3);
        ws.settle(Instant::now() + LAND, &mut maps);
        assert_eq!(maps.files, HashSet::from([fk(3)]));
        assert_eq!(ws.kernel_files(), 1);
    }

    #[test]
    fn unlink_withdraws_only_the_last_name_and_only_if_it_went() {
        let d = tmpdir("unlink");
        let mut maps = MemMaps::default();
        let mut ws = WatchSet::default();
        std::fs::write(d.join("img.qcow2"), b"x").unwrap();
        std::fs::write(d.join("kept.qcow2"), b"x").unwrap();
        ws.add_root(&d, &mut maps).unwrap();
        let key = key_for(
            &d.join("img.qcow2"),
            &std::fs::metadata(d.join("img.qcow2")).unwrap(),
        );
        // A hard link is a second name: unlinking the first leaves the file watched.
        std::fs::hard_link(d.join("img.qcow2"), d.join("link.qcow2")).unwrap();
        ws.observe_new_path(&d.join("link.qcow2"), &mut maps);
        std::fs::remove_file(d.join("img.qcow2")).unwrap();
        ws.forget_path(&d.join("img.qcow2"));
        ws.settle(Instant::now() + LAND, &mut maps);
        assert!(maps.files.contains(&key));
        assert_eq!(ws.path_of(&key).unwrap(), &d.join("link.qcow2"));
        // An unlink the kernel refused (the sticky bit): the name comes back, still watched.
        let kept = key_for(
            &d.join("kept.qcow2"),
            &std::fs::metadata(d.join("kept.qcow2")).unwrap(),
        );
        ws.forget_path(&d.join("kept.qcow2"));
        ws.settle(Instant::now() + LAND, &mut maps);
        assert!(maps.files.contains(&kept));
        assert_eq!(ws.key_at(&d.join("kept.qcow2")), Some(kept));
        // The last name goes: withdrawn from the map and the table.
        std::fs::remove_file(d.join("link.qcow2")).unwrap();
        ws.forget_path(&d.join("link.qcow2"));
        ws.settle(Instant::now() + LAND, &mut maps);
        assert!(!maps.files.contains(&key));
        assert_eq!(ws.path_of(&key), None);
        assert_eq!(ws.key_at(&d.join("link.qcow2")), None);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn junk_cannot_take_the_headroom_of_images_and_refusals_are_counted() {
        let mut ws = over_s();
        ws.precious = Precious {
            exts: vec!["qcow2".into()],
            meta_exts: vec!["xml".into()],
            meta_roots: vec![PathBuf::from("/s/lvm")],
        };
        let mut maps = MemMaps {
            cap: Some(snapmon_common::WATCHED_FILES_MAX as usize),
            ..Default::default()
        };
        for i in 0..ORDINARY_LIMIT as u64 {
            ws.seen(fk(i + 1), PathBuf::from(format!("/s/n{i}")), &mut maps);
        }
        assert!(
            maps.reserve,
            "the kernel is told to leave new files to the agent"
        );
        assert_eq!(ws.take_loss(), WatchLoss::default());
        ws.seen(fk(1 << 40), PathBuf::from("/s/junk"), &mut maps);
        assert!(!maps.files.contains(&fk(1 << 40)));
        assert_eq!(ws.take_loss().watch_full, 1);
        for (i, p) in ["/s/vm.QCOW2", "/s/vm.xml", "/s/lvm/vg0"]
            .iter()
            .enumerate()
        {
            ws.seen(fk((1 << 41) + i as u64), PathBuf::from(p), &mut maps);
            assert!(maps.files.contains(&fk((1 << 41) + i as u64)), "{p}");
        }
        // Entries the agent never heard of (their events were lost) fill the map: an image
        // still gets in, by sweeping them out.
        let mut n = 0;
        while maps.files.len() < maps.cap.unwrap() {
            maps.files.insert(fk((1 << 42) + n));
            n += 1;
        }
        ws.seen(fk(1 << 43), PathBuf::from("/s/late.qcow2"), &mut maps);
        assert!(maps.files.contains(&fk(1 << 43)));
        assert!(!maps.files.contains(&fk(1 << 42)));
        // Freed by unlinks: ordinary files are admitted again.
        for i in 0..100u64 {
            ws.forget_path(&PathBuf::from(format!("/s/n{i}")));
        }
        ws.settle(Instant::now() + LAND, &mut maps);
        assert!(!maps.reserve);
        ws.seen(fk(1 << 44), PathBuf::from("/s/plain"), &mut maps);
        assert!(maps.files.contains(&fk(1 << 44)));
        assert_eq!(ws.take_loss(), WatchLoss::default());
    }

    #[test]
    fn the_kernels_share_of_junk_holds_the_agent_too_and_its_refusals_count_once() {
        let mut ws = over_s();
        ws.precious = Precious {
            exts: vec!["qcow2".into()],
            meta_exts: vec!["xml".into()],
            meta_roots: vec![PathBuf::from("/s/lvm")],
        };
        assert_eq!(
            ws.precious.ext_hashes(),
            vec![
                snapmon_common::ext_hash(b"QCOW2"),
                snapmon_common::ext_hash(b"xml")
            ]
        );
        assert!(ws.precious.meta_dir(Path::new("/s/lvm/vg0")));
        assert!(!ws.precious.meta_dir(Path::new("/s/other")));
        let mut maps = MemMaps {
            cap: Some(snapmon_common::WATCHED_FILES_MAX as usize),
            ..Default::default()
        };
        // The kernel filled the ordinary share at create, faster than the agent heard of it
        // (and the share was swept a moment ago: the flood is in flight).
        ws.share_sweep_at = Some(Instant::now() + Duration::from_secs(3600));
        for i in 0..ORDINARY_LIMIT as u64 {
            maps.add_file(fk((1 << 30) + i), true, None).unwrap();
        }
        // The agent hears of one it admitted: in already, so neither added nor counted twice.
        ws.seen_opened(fk(1 << 30), PathBuf::from("/s/n0"), false, &mut maps);
        assert_eq!(maps.ordinary.len(), ORDINARY_LIMIT);
        assert_eq!(ws.take_loss(), WatchLoss::default());
        // One the kernel refused (and counted): not counted again, not admitted.
        ws.seen_opened(fk(1), PathBuf::from("/s/junk"), true, &mut maps);
        assert!(!maps.files.contains(&fk(1)));
        assert_eq!(ws.take_loss(), WatchLoss::default());
        // One the kernel left to the agent (reserve): the share is full, so it is refused
        // although the agent itself knows of few files; that refusal is the agent's to count.
        ws.seen_opened(fk(2), PathBuf::from("/s/plain"), false, &mut maps);
        assert!(!maps.files.contains(&fk(2)));
        assert_eq!(ws.take_loss().watch_full, 1);
        // Images and metadata still get in, uncounted in the share.
        for (i, p) in ["/s/vm.qcow2", "/s/vm.xml", "/s/lvm/vg0"]
            .iter()
            .enumerate()
        {
            ws.seen_opened(fk(10 + i as u64), PathBuf::from(p), false, &mut maps);
            assert!(maps.files.contains(&fk(10 + i as u64)), "{p}");
        }
        // An image the kernel could not take (map full then) gets its second chance here.
        ws.seen_opened(fk(20), PathBuf::from("/s/b.qcow2"), true, &mut maps);
        assert!(maps.files.contains(&fk(20)));
        assert_eq!(maps.ordinary.len(), ORDINARY_LIMIT);
        assert_eq!(ws.take_loss(), WatchLoss::default());
        // Entries whose events were all lost hold room in the share: swept out (once per
        // interval), so an ordinary file gets in again.
        ws.share_sweep_at = None;
        maps.remove_file(fk(1 << 30));
        maps.add_file(fk(1 << 29), true, None).unwrap();
        ws.seen_opened(fk(3), PathBuf::from("/s/plain2"), false, &mut maps);
        assert!(maps.files.contains(&fk(3)));
        assert!(!maps.files.contains(&fk(1 << 29)), "unknown entry swept");
        assert_eq!(ws.take_loss(), WatchLoss::default());
        // Unlinked: the ordinary entry's room goes back to the share.
        maps.add_file(fk(1 << 30), true, None).unwrap();
        ws.forget_path(Path::new("/s/n0"));
        ws.settle(Instant::now() + LAND, &mut maps);
        assert!(!maps.files.contains(&fk(1 << 30)));
        ws.seen_opened(fk(2), PathBuf::from("/s/plain"), false, &mut maps);
        assert!(maps.files.contains(&fk(2)));
    }

    #[test]
    fn names_with_a_byte_prefix_come_from_the_index_alone() {
        let mut ws = WatchSet::default();
        let k = |ino| FileKey {
            dev: 1,
            ino,
            ..Default::default()
        };
        for (i, p) in [
            "/s/a", "/s/ab", "/s/ab/x", "/s/ab-", "/s/abc", "/s/abc/y", "/s/b", "/s/a/ab", "/t/ab",
        ]
        .iter()
        .enumerate()
        {
            ws.learn(k(i as u64 + 1), PathBuf::from(p));
        }
        let got = |head: &str| {
            let mut v: Vec<String> = ws
                .named_with_prefix(head.as_bytes())
                .map(|(_, p)| p.display().to_string())
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            got("/s/ab"),
            ["/s/ab", "/s/ab-", "/s/ab/x", "/s/abc", "/s/abc/y"]
        );
        assert_eq!(got("/s/ab/"), ["/s/ab/x"]);
        assert_eq!(got("/s/abc"), ["/s/abc", "/s/abc/y"]);
        assert_eq!(
            got("/s/"),
            ["/s/a", "/s/a/ab", "/s/ab", "/s/ab-", "/s/ab/x", "/s/abc", "/s/abc/y", "/s/b"]
        );
        assert!(got("/s/z").is_empty());
    }
}
