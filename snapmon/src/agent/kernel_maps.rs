//! The kernel's watch maps as the watch set's backing store (`watch::WatchMaps`).

use aya::maps::{HashMap as BpfHashMap, MapData};
use snapmon_common::{FileKey, WriteFilter};

use crate::{kernel::loader::Kernel, watch::WatchMaps};

/// Kernel maps as the watch set's backing store.
pub struct KernelMaps<'a> {
    pub files: &'a mut BpfHashMap<MapData, FileKey, u32>,
    /// Ordinary entries of `files` (`snapmon_common::watch_share`).
    pub share: &'a mut aya::maps::Array<MapData, u64>,
    pub precious_exts: &'a mut BpfHashMap<MapData, u64, u32>,
    /// The write hooks' inode-number prefilter (`snapmon_common::ino_slot`).
    pub ino_slots: &'a mut aya::maps::Array<MapData, u32>,
    pub dirs: &'a mut BpfHashMap<MapData, FileKey, u32>,
    pub prefixes: &'a mut BpfHashMap<MapData, u64, u32>,
    pub leaves: &'a mut BpfHashMap<MapData, u64, u32>,
    pub write_filter: &'a mut BpfHashMap<MapData, FileKey, WriteFilter>,
    /// Runtime flags (`snapmon_common::runtime`): the file map's reserve bit.
    pub runtime: &'a mut aya::maps::Array<MapData, u32>,
    /// Loop devices over watched images, by device number (`WATCHED_RDEV`).
    pub rdevs: &'a mut BpfHashMap<MapData, u32, FileKey>,
    pub rdev_any: &'a mut aya::maps::Array<MapData, u32>,
    /// Inode numbers of watched images (`IMAGE_INO`).
    pub image_ino: &'a mut BpfHashMap<MapData, u64, u32>,
}

impl<'a> KernelMaps<'a> {
    /// The watch-set maps of a loaded kernel side.
    pub fn of(k: &'a mut Kernel) -> Self {
        let w = &mut k.watch;
        KernelMaps {
            files: &mut w.files,
            share: &mut w.share,
            precious_exts: &mut w.precious_exts,
            ino_slots: &mut w.ino_slots,
            dirs: &mut w.dirs,
            prefixes: &mut w.prefixes,
            leaves: &mut w.leaves,
            write_filter: &mut w.write_filter,
            runtime: &mut k.runtime,
            rdevs: &mut w.rdevs,
            rdev_any: &mut w.rdev_any,
            image_ino: &mut w.image_ino,
        }
    }
}

const BPF_NOEXIST: u64 = 1;

/// Ordinary entries of the watched-files map, as kernel and agent counted them.
pub(super) fn ordinary_entries(share: &aya::maps::Array<MapData, u64>) -> u64 {
    use snapmon_common::watch_share as w;
    let s = |i| share.get(&i, 0).unwrap_or(0);
    (s(w::KERNEL_ADDED) + s(w::AGENT_ADDED)).saturating_sub(s(w::AGENT_REMOVED))
}

impl KernelMaps<'_> {
    /// Add one to a `watch_share` slot the agent writes (it is that slot's only writer).
    fn bump(&mut self, slot: u32) {
        let n = self.share.get(&slot, 0).unwrap_or(0);
        if let Err(e) = self.share.set(slot, n + 1, 0) {
            eprintln!("snapmon: watch-share map: {e}");
        }
    }

    /// Delete `key` from the file map; an ordinary entry gives its room back to the share.
    fn withdraw(&mut self, key: &FileKey) -> bool {
        let value = self.files.get(key, 0).unwrap_or(0);
        let gone = self.files.remove(key).is_ok();
        if gone && value & snapmon_common::watch_value::ORDINARY != 0 {
            self.bump(snapmon_common::watch_share::AGENT_REMOVED);
        }
        gone
    }
}

impl WatchMaps for KernelMaps<'_> {
    fn add_file(
        &mut self,
        key: FileKey,
        ordinary: bool,
        generation: Option<u32>,
    ) -> Result<(), String> {
        use snapmon_common::watch_value;
        // Slot first: a write between the two must not be dropped by the prefilter.
        self.ino_slots
            .set(snapmon_common::ino_slot(key.ino), 1, 0)
            .map_err(|e| format!("watched-inode prefilter map: {e}"))?;
        let flags = if ordinary { watch_value::ORDINARY } else { 0 };
        let value = match generation {
            Some(g) => watch_value::with_generation(flags, g),
            None => flags,
        };
        match self.files.insert(key, value, BPF_NOEXIST) {
            Ok(()) => {
                if ordinary {
                    self.bump(snapmon_common::watch_share::AGENT_ADDED);
                }
                Ok(())
            }
            // In already (the kernel took it at create): its value is kept, so the ordinary
            // share is counted once, by whoever inserted it.
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(())
            }
            Err(e) => Err(format!("watched-files map: {e}")),
        }
    }
    fn remove_file(&mut self, key: FileKey) {
        // Absent already (never taken, or withdrawn before) is the wanted end state. The
        // prefilter slot stays: other inodes may share it, and it only costs a lookup.
        self.withdraw(&key);
    }
    fn has_file(&self, key: FileKey) -> bool {
        self.files.get(&key, 0).is_ok()
    }
    fn ordinary_entries(&self) -> Option<u64> {
        Some(ordinary_entries(self.share))
    }
    fn set_precious_exts(&mut self, hashes: &[u64]) -> Result<(), String> {
        for h in hashes {
            self.precious_exts
                .insert(*h, 1, 0)
                .map_err(|e| format!("precious-extensions map: {e}"))?;
        }
        Ok(())
    }
    fn set_reserve(&mut self, on: bool) -> Result<(), String> {
        let old = self.runtime.get(&0, 0).unwrap_or(0);
        let new = if on {
            old | snapmon_common::runtime::WATCH_RESERVE
        } else {
            old & !snapmon_common::runtime::WATCH_RESERVE
        };
        self.runtime
            .set(0, new, 0)
            .map_err(|e| format!("runtime flags map: {e}"))
    }
    fn sweep_files(&mut self, keep: &dyn Fn(&FileKey) -> bool) -> usize {
        let gone: Vec<FileKey> = self
            .files
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !keep(k))
            .collect();
        gone.iter().filter(|k| self.withdraw(k)).count()
    }
    fn add_dir(&mut self, key: FileKey, flags: u32) -> Result<(), String> {
        let old = self.dirs.get(&key, 0).unwrap_or(0);
        self.dirs
            .insert(key, old | flags, 0)
            .map_err(|e| format!("watched-dirs map: {e}"))
    }
    fn note_image(&mut self, key: FileKey) {
        // An LRU set: never full, and a number left behind by a gone image costs at most a
        // candidate the agent withdraws.
        let _ = self.image_ino.insert(key.ino, 1, 0);
    }
    fn remove_dir(&mut self, key: FileKey) {
        // Absent already is the wanted end state.
        let _ = self.dirs.remove(&key);
    }
    fn add_prefix(&mut self, hash: u64) -> Result<(), String> {
        self.prefixes
            .insert(hash, 1, 0)
            .map_err(|e| format!("watched-prefix map: {e}"))
    }
    fn set_leaf(&mut self, hash: u64, on: bool) -> Result<(), String> {
        if on {
            self.leaves
                .insert(hash, 1, 0)
                .map_err(|e| format!("watched-leaves map: {e}"))
        } else {
            // Absent already is the wanted end state.
            let _ = self.leaves.remove(&hash);
            Ok(())
        }
    }
    fn add_rdev_alias(&mut self, rdev: u32, node: FileKey) {
        // As the kernel's attach hook: the entry first, then the flag the write hooks read.
        if self.rdevs.insert(rdev, node, 0).is_ok() {
            let _ = self.rdev_any.set(0, 1, 0);
        }
    }
    fn remove_rdev_alias(&mut self, node: FileKey) {
        let gone: Vec<u32> = self
            .rdevs
            .iter()
            .flatten()
            .filter(|(_, n)| *n == node)
            .map(|(r, _)| r)
            .collect();
        for r in gone {
            let _ = self.rdevs.remove(&r);
        }
        // The last one gone: spare every write the i_rdev read again. Cleared first and
        // set again if the kernel added one meanwhile (it sets the flag after its insert).
        if self.rdevs.keys().next().is_none() {
            let _ = self.rdev_any.set(0, 0, 0);
            if self.rdevs.keys().next().is_some() {
                let _ = self.rdev_any.set(0, 1, 0);
            }
        }
    }
    fn set_write_filter(&mut self, key: FileKey, f: Option<&WriteFilter>) -> Result<(), String> {
        match f {
            Some(f) => self
                .write_filter
                .insert(key, *f, 0)
                .map_err(|e| format!("write-filter map: {e}")),
            // Already absent is fine: withdrawing is idempotent.
            None => {
                let _ = self.write_filter.remove(&key);
                Ok(())
            }
        }
    }
}
