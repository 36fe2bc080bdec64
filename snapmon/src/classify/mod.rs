//! Classify stage: format intelligence. Works out what each event touched (a qcow2 header
//! field, the snapshot table, LVM metadata, a device-mapper table load …) and the diff.

use serde::Serialize;

/// A field that changed: `nb_snapshots: 3 → 0`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub field: String,
    pub before: String,
    pub after: String,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} → {}", self.field, self.before, self.after)
    }
}

/// What the classify stage attaches to an event.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Classification {
    /// `qcow2`, `lvm`, `libvirt`, `dm`, `btrfs`, `zfs`, `file` …
    pub format: &'static str,
    /// Region labels in offset order (`header.nb_snapshots`, `snapshot_table`, `data` …).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<Change>,
    /// Decoded ioctl (`DM_TABLE_LOAD vg-snap [snapshot …]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ioctl: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ioctl_name: Option<String>,
    /// Shannon entropy (bits/byte) of the captured write sample, when judged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_entropy: Option<f64>,
}

/// Per-file format state (shadow headers) and the decoders, behind one call.
pub struct Classifier {}

impl Classifier {
    pub fn new(_policy: &crate::config::Policy) -> Self {
        Classifier {}
    }

    pub fn classify(&mut self, _ev: &crate::event::Event, _path: Option<&std::path::Path>) -> Option<Classification> {
        None
    }
}
