//! Region map: what a byte range of the image holds.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Serialize, Serializer};

use super::extension::extension_name;

/// What a byte of the image file is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Region {
    /// `header.<field>`, `header.reserved` or `header.padding`.
    Header(&'static str),
    /// `header.extension.<name>` (type 0, the terminator, is `end`).
    Extension(u32),
    BackingName,
    /// LUKS header area referenced by the encryption extension.
    CryptoHeader,
    SnapshotTable,
    L1Active,
    L1Snapshot(String),
    Refcount,
    L2,
    Bitmap,
    Data,
}

/// `header.<field>` of a header region, without formatting for the fields there are: this
/// runs for every classified header write.
fn header_label(f: &'static str) -> Cow<'static, str> {
    let l = match f {
        "magic" => "header.magic",
        "version" => "header.version",
        "backing_file_offset" => "header.backing_file_offset",
        "backing_file_size" => "header.backing_file_size",
        "cluster_bits" => "header.cluster_bits",
        "size" => "header.size",
        "crypt_method" => "header.crypt_method",
        "l1_size" => "header.l1_size",
        "l1_table_offset" => "header.l1_table_offset",
        "refcount_table_offset" => "header.refcount_table_offset",
        "refcount_table_clusters" => "header.refcount_table_clusters",
        "nb_snapshots" => "header.nb_snapshots",
        "snapshots_offset" => "header.snapshots_offset",
        "incompatible_features" => "header.incompatible_features",
        "compatible_features" => "header.compatible_features",
        "autoclear_features" => "header.autoclear_features",
        "refcount_order" => "header.refcount_order",
        "header_length" => "header.header_length",
        "compression_type" => "header.compression_type",
        "reserved" => "header.reserved",
        "padding" => "header.padding",
        _ => return format!("header.{f}").into(),
    };
    l.into()
}

impl Region {
    pub fn as_label(&self) -> Cow<'static, str> {
        match self {
            Region::Header(f) => header_label(f),
            Region::Extension(t) => format!("header.extension.{}", extension_name(*t)).into(),
            Region::BackingName => "backing_name".into(),
            Region::CryptoHeader => "crypto_header".into(),
            Region::SnapshotTable => "snapshot_table".into(),
            Region::L1Active => "l1.active".into(),
            Region::L1Snapshot(_) => "l1.snapshot".into(),
            Region::Refcount => "refcount".into(),
            Region::L2 => "l2".into(),
            Region::Bitmap => "bitmap".into(),
            Region::Data => "data".into(),
        }
    }

    pub fn is_header(&self) -> bool {
        matches!(
            self,
            Region::Header(_) | Region::Extension(_) | Region::BackingName
        )
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_label())?;
        if let Region::L1Snapshot(name) = self {
            write!(f, "({name})")?;
        }
        Ok(())
    }
}

impl Serialize for Region {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegionSpan {
    pub region: Region,
    /// Half-open byte range [start, end).
    pub start: u64,
    pub end: u64,
}

/// Non-overlapping painted extents (first painter wins) plus sorted cluster
/// sets for the potentially numerous L2 tables and refcount blocks.
#[derive(Debug, Clone, Default)]
pub(super) struct RegionMap {
    pub(super) painted: BTreeMap<u64, (u64, Region)>,
    pub(super) refblocks: Vec<u64>,
    pub(super) l2: Vec<u64>,
    pub(super) cluster_size: u64,
}

impl RegionMap {
    pub(super) fn paint(&mut self, start: u64, end: u64, region: Region) {
        if start >= end {
            return;
        }
        let taken: Vec<(u64, u64)> = self
            .painted
            .range(..end)
            .rev()
            .take_while(|(_, (e, _))| *e > start)
            .map(|(s, (e, _))| (*s, *e))
            .collect();
        let mut cur = start;
        for (s, e) in taken.into_iter().rev() {
            if s > cur {
                self.painted.insert(cur, (s, region.clone()));
            }
            cur = cur.max(e);
        }
        if cur < end {
            self.painted.insert(cur, (end, region));
        }
    }

    fn next_in(set: &[u64], p: u64) -> u64 {
        set.get(set.partition_point(|&c| c <= p))
            .copied()
            .unwrap_or(u64::MAX)
    }

    /// Region at byte `p` and where that run ends (always > p).
    pub(super) fn region_at(&self, p: u64) -> (Region, u64) {
        if let Some((_, (e, r))) = self.painted.range(..=p).next_back() {
            if *e > p {
                return (r.clone(), *e);
            }
        }
        let np = self
            .painted
            .range(p.saturating_add(1)..)
            .next()
            .map_or(u64::MAX, |(s, _)| *s);
        let cs = self.cluster_size.max(1);
        let c = p - p % cs;
        let ce = c.saturating_add(cs).min(np);
        if self.refblocks.binary_search(&c).is_ok() {
            return (Region::Refcount, ce);
        }
        if self.l2.binary_search(&c).is_ok() {
            return (Region::L2, ce);
        }
        if p < cs {
            return (Region::Header("padding"), ce);
        }
        let next = np
            .min(Self::next_in(&self.refblocks, p))
            .min(Self::next_in(&self.l2, p));
        (Region::Data, next)
    }
}
