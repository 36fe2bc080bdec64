//! The classification an event carries: what the classify stage found. Plain data, so the
//! event model holds it without importing the stage.

use serde::Serialize;

use super::qcow2::FieldChange;

/// `snapmon.classification.format`: what the file (or an ioctl's target) is, named once.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::EnumIter,
)]
pub enum Format {
    /// Not classified yet (`Classification::default`); the agent never reports it.
    #[default]
    #[strum(serialize = "")]
    Unset,
    #[strum(serialize = "qcow2")]
    Qcow2,
    #[strum(serialize = "lvm")]
    Lvm,
    /// An LVM metadata backup or archive file (`/etc/lvm/backup`, `archive`).
    #[strum(serialize = "lvm-backup")]
    LvmBackup,
    /// A libvirt snapshot or domain XML file.
    #[strum(serialize = "libvirt")]
    Libvirt,
    // ioctl families (`ioctl::IoctlInfo::family`).
    #[strum(serialize = "dm")]
    Dm,
    #[strum(serialize = "btrfs")]
    Btrfs,
    #[strum(serialize = "zfs")]
    Zfs,
    #[strum(serialize = "loop")]
    Loop,
    /// An ioctl of no family this agent decodes.
    #[strum(serialize = "unknown")]
    Unknown,
    /// Any other file: not a format the agent models.
    #[strum(serialize = "file")]
    File,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl Serialize for Format {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

// Tests compare a classification's format with the name the output shows.
#[cfg(test)]
impl PartialEq<&str> for Format {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_parses_back_from_its_name() {
        use strum::IntoEnumIterator;
        for f in Format::iter() {
            assert_eq!(f.as_str().parse::<Format>(), Ok(f), "{f:?}");
            assert_eq!(serde_json::to_value(f).unwrap(), f.as_str());
        }
    }
}
