//! The shadow: the last known image, patched by observed header writes.

use std::io::{Read, Seek};

use super::base::{FieldChange, Qcow2Error, SHADOW_BYTES};
use super::diff::{diff_backing, diff_headers, diff_images};
use super::extension::{parse_head, BackingName};
use super::header::Qcow2Header;
use super::image::Qcow2Image;
use super::reader::Src;
use super::snapshot::SnapshotEntry;

/// Captured header write applied to the shadow's raw bytes.
#[derive(Debug, Clone)]
pub struct HeaderPatch {
    pub raw: Vec<u8>,
    /// Lossy decode of the patched header (always available).
    pub header: Qcow2Header,
    /// Why the patched header would not open (None = valid).
    pub error: Option<String>,
    pub backing_file: Option<BackingName>,
    pub changes: Vec<FieldChange>,
    /// Snapshot list as far as it can be inferred without reading the file.
    pub snapshots: Option<Vec<SnapshotEntry>>,
}

/// Shadow copy of an image's header area plus its parsed state.
#[derive(Debug, Clone)]
pub struct Qcow2Shadow {
    pub raw: Vec<u8>,
    pub image: Qcow2Image,
}

impl Qcow2Shadow {
    pub fn load<R: Read + Seek>(r: &mut R) -> Result<Self, Qcow2Error> {
        let image = Qcow2Image::read_from(r)?;
        let mut src = Src::new(r)?;
        let raw = src.read_clamped(0, image.cluster_size().min(SHADOW_BYTES))?;
        Ok(Self { raw, image })
    }

    /// Patch a captured write into a copy of the raw header bytes and diff
    /// it against the shadow. None if the write misses the header area.
    pub fn apply_header_write(&self, offset: u64, data: &[u8]) -> Option<HeaderPatch> {
        let rl = self.raw.len() as u64;
        if offset >= rl || data.is_empty() {
            return None;
        }
        let mut raw = self.raw.clone();
        let n = (rl - offset).min(data.len() as u64) as usize;
        raw[offset as usize..offset as usize + n].copy_from_slice(&data[..n]);
        let header = Qcow2Header::decode_lossy(&raw);
        let parsed = parse_head(&raw);
        let error = parsed.as_ref().err().map(|e| e.to_string());
        let backing_file = match &parsed {
            Ok((_, _, b)) => b.clone(),
            Err(_) => self.image.backing_file.clone(),
        };
        let mut changes = diff_headers(&self.image.header, &header);
        changes.extend(diff_backing(
            self.image.backing_file.as_ref(),
            backing_file.as_ref(),
        ));
        // Same table offset and fewer entries: the surviving entries are a
        // prefix of the old table, so the removed ones are known exactly.
        let old = &self.image.header;
        let snapshots = (error.is_none() && header.snapshots_offset == old.snapshots_offset)
            .then(|| self.image.snapshots.get(..header.nb_snapshots as usize))
            .flatten()
            .map(<[SnapshotEntry]>::to_vec);
        if let Some(kept) = &snapshots {
            changes.extend(
                self.image.snapshots[kept.len()..]
                    .iter()
                    .map(|s| FieldChange::new("snapshot_removed", &s.name, "")),
            );
        }
        Some(HeaderPatch {
            raw,
            header,
            error,
            backing_file,
            changes,
            snapshots,
        })
    }

    /// Take a patch into the shadow. Returns false when the shadow can no
    /// longer be kept consistent without `refresh` (invalid header, or
    /// snapshot/table pointers that need file reads).
    pub fn absorb(&mut self, patch: HeaderPatch) -> bool {
        self.raw = patch.raw;
        let Ok((header, extensions, backing)) = parse_head(&self.raw) else {
            return false;
        };
        let consistent = patch.snapshots.is_some()
            && header.l1_table_offset == self.image.header.l1_table_offset
            && header.l1_size == self.image.header.l1_size
            && header.refcount_table_offset == self.image.header.refcount_table_offset
            && header.refcount_table_clusters == self.image.header.refcount_table_clusters
            && header.cluster_bits == self.image.header.cluster_bits;
        // Same layout (a field rewritten in place): the region map stays valid as it is.
        let same_layout = header == self.image.header
            && extensions == self.image.extensions
            && backing == self.image.backing_file
            && patch
                .snapshots
                .as_ref()
                .is_some_and(|s| s.len() == self.image.snapshots.len());
        if same_layout {
            return consistent;
        }
        let same_tables = patch
            .snapshots
            .as_ref()
            .is_some_and(|s| s.len() == self.image.snapshot_l1.len());
        if let Some(s) = patch.snapshots {
            self.image.snapshot_l1.truncate(s.len());
            self.image.snapshot_table_len = s.iter().map(|e| e.entry_len).sum();
            self.image.snapshots = s;
        }
        self.image.header = header;
        self.image.extensions = extensions;
        self.image.backing_file = backing;
        if consistent && same_tables {
            // L1 and refcount tables untouched: keep their (costly) cluster sets.
            self.image.rebuild_map_keeping_tables();
        } else {
            self.image.rebuild_map();
        }
        consistent
    }

    /// Would this write leave the shadow's header bytes exactly as they are (a field
    /// rewritten with its current value)? Only when the shadow is itself consistent.
    pub fn is_noop_write(&self, offset: u64, data: &[u8]) -> bool {
        let Ok(o) = usize::try_from(offset) else {
            return false;
        };
        let Some(end) = o.checked_add(data.len()) else {
            return false;
        };
        !data.is_empty()
            && self.raw.get(o..end) == Some(data)
            && Qcow2Header::decode_lossy(&self.raw) == self.image.header
            && self.image.snapshots.len() >= self.image.header.nb_snapshots as usize
    }

    /// Re-read the file, diff against the shadow and replace it.
    pub fn refresh<R: Read + Seek>(&mut self, r: &mut R) -> Result<Vec<FieldChange>, Qcow2Error> {
        let new = Self::load(r)?;
        let changes = diff_images(&self.image, &new.image);
        *self = new;
        Ok(changes)
    }
}
