//! The one name of each format a file (or an ioctl's target) is classified as.

use serde::Serialize;

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

// Tests (here and in the agent) compare a format with the name the output shows.
impl PartialEq<&str> for Format {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
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
