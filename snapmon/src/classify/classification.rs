//! The classification an event carries: what the classify stage found. Plain data, so the
//! event model holds it without importing the stage.

use serde::Serialize;

pub use snapmon_formats::{FieldChange, Format};

/// What the classify stage attaches to an event.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Classification {
    pub format: Format,
    /// Region labels in offset order (`header.nb_snapshots`, `snapshot_table`, `data` …).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<FieldChange>,
    /// Decoded ioctl.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ioctl: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ioctl_name: Option<String>,
    /// The ioctl destroys or creates a snapshot (dm/btrfs/zfs semantics).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub snapshot_destructive: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub snapshot_create: bool,
    /// Shannon entropy (bits/byte) of the captured write sample, when judged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_entropy: Option<f64>,
    /// Facts from the file itself (libvirt snapshot name and domain, LVM description …).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub facts: Vec<(String, String)>,
}
