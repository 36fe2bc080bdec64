//! libvirt snapshot/checkpoint XML and metadata path decoding.
//!
//! libvirt keeps one XML file per snapshot or checkpoint under the QEMU
//! driver's `snapshotDir` / `checkpointDir` (see `src/qemu/qemu_conf.c`) and
//! writes it as `<path>.new`, fsync, rename.

use std::fmt;

use serde::Serialize;

/// Largest XML document we agree to parse.
pub const MAX_XML_SIZE: usize = 1024 * 1024;
/// roxmltree node cap; a real snapshot with a full domain is a few thousand.
const MAX_XML_NODES: u32 = 200_000;
/// Cap on `<disk>` entries reported.
const MAX_DISKS: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LibvirtError {
    #[error("XML document too large: {0} bytes")]
    TooLarge(usize),
    #[error("XML document is not UTF-8")]
    NotUtf8,
    #[error("XML parse error: {0}")]
    Xml(String),
    #[error("unexpected root element <{0}>")]
    UnexpectedRoot(String),
    #[error("document has no <name>")]
    MissingName,
}

pub type Result<T> = std::result::Result<T, LibvirtError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LibvirtKind {
    Snapshot,
    Checkpoint,
}

impl fmt::Display for LibvirtKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LibvirtKind::Snapshot => "snapshot",
            LibvirtKind::Checkpoint => "checkpoint",
        })
    }
}

/// One `<disk>` of a snapshot or checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct LibvirtDisk {
    /// Target name (`vda`) or path.
    pub name: String,
    /// `snapshot=` (internal/external/manual/no) or `checkpoint=` (bitmap/no).
    pub mode: Option<String>,
    /// `<source file=>`, `dev=`, `dir=` or network `name=`.
    pub source: Option<String>,
    /// `<driver type=>` (e.g. qcow2).
    pub driver_type: Option<String>,
    /// Checkpoint bitmap name.
    pub bitmap: Option<String>,
}

/// Decoded `<domainsnapshot>` / `<domaincheckpoint>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LibvirtDoc {
    pub kind: LibvirtKind,
    pub name: String,
    pub parent: Option<String>,
    pub description: Option<String>,
    pub domain_name: Option<String>,
    pub domain_uuid: Option<String>,
    /// Seconds since the epoch (`<creationTime>`).
    pub creation_time: Option<i64>,
    /// Snapshot only: domain state when taken (running, shutoff, disk-snapshot…).
    pub state: Option<String>,
    /// Snapshot only: `<memory snapshot=>` and its `file=`.
    pub memory_mode: Option<String>,
    pub memory_file: Option<String>,
    /// libvirt's internal format marks the current snapshot `<active>1`.
    pub current: bool,
    pub disks: Vec<LibvirtDisk>,
    /// More `<disk>` elements existed than were kept.
    pub disks_truncated: bool,
}

fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, tag: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children()
        .find(|c| c.is_element() && c.tag_name().name() == tag)
}

fn child_text(n: roxmltree::Node<'_, '_>, tag: &str) -> Option<String> {
    let c = child(n, tag)?;
    let t: String = c
        .children()
        .filter(|t| t.is_text())
        .filter_map(|t| t.text())
        .collect();
    Some(t)
}

fn trimmed(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// Parse snapshot or checkpoint XML (bytes as read from the file).
pub fn parse_libvirt_xml(bytes: &[u8]) -> Result<LibvirtDoc> {
    if bytes.len() > MAX_XML_SIZE {
        return Err(LibvirtError::TooLarge(bytes.len()));
    }
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|_| LibvirtError::NotUtf8)?;
    let opt = roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_XML_NODES,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(text, opt)
        .map_err(|e| LibvirtError::Xml(e.to_string()))?;
    let root = doc.root_element();
    let (kind, mode_attr) = match root.tag_name().name() {
        "domainsnapshot" => (LibvirtKind::Snapshot, "snapshot"),
        "domaincheckpoint" => (LibvirtKind::Checkpoint, "checkpoint"),
        other => return Err(LibvirtError::UnexpectedRoot(other.to_string())),
    };
    // Only direct children: the embedded <domain> has its own <name>.
    let name = trimmed(child_text(root, "name")).ok_or(LibvirtError::MissingName)?;
    let parent = child(root, "parent").and_then(|p| trimmed(child_text(p, "name")));
    let domain = child(root, "domain");
    let memory = child(root, "memory");

    let mut disks = Vec::new();
    let mut disks_truncated = false;
    if let Some(ds) = child(root, "disks") {
        for d in ds
            .children()
            .filter(|c| c.is_element() && c.tag_name().name() == "disk")
        {
            if disks.len() >= MAX_DISKS {
                disks_truncated = true;
                break;
            }
            let src = child(d, "source");
            disks.push(LibvirtDisk {
                name: d.attribute("name").unwrap_or_default().to_string(),
                mode: d.attribute(mode_attr).map(str::to_string),
                source: src.and_then(|s| {
                    ["file", "dev", "dir", "name"]
                        .iter()
                        .find_map(|a| s.attribute(*a))
                        .map(str::to_string)
                }),
                driver_type: child(d, "driver")
                    .and_then(|x| x.attribute("type"))
                    .map(str::to_string),
                bitmap: d.attribute("bitmap").map(str::to_string),
            });
        }
    }

    Ok(LibvirtDoc {
        kind,
        name,
        parent,
        description: child_text(root, "description").filter(|s| !s.is_empty()),
        domain_name: domain.and_then(|d| trimmed(child_text(d, "name"))),
        domain_uuid: domain.and_then(|d| trimmed(child_text(d, "uuid"))),
        creation_time: trimmed(child_text(root, "creationTime")).and_then(|s| s.parse().ok()),
        state: trimmed(child_text(root, "state")),
        memory_mode: memory
            .and_then(|m| m.attribute("snapshot"))
            .map(str::to_string),
        memory_file: memory.and_then(|m| m.attribute("file")).map(str::to_string),
        current: trimmed(child_text(root, "active")).as_deref() == Some("1"),
        disks,
        disks_truncated,
    })
}

// ---------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LibvirtScope {
    /// `qemu:///system`: `/var/lib/libvirt/qemu/...`
    System,
    /// `qemu:///session`: `~/.config/libvirt/qemu/...`
    Session,
}

/// A path inside libvirt's snapshot/checkpoint metadata directories.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LibvirtFile {
    pub kind: LibvirtKind,
    pub scope: LibvirtScope,
    pub domain: String,
    /// Snapshot/checkpoint name (file name without `.xml`).
    pub name: String,
    /// The `<name>.xml.new` temp file libvirt writes before renaming.
    pub temp: bool,
}

/// Recognise `/var/lib/libvirt/qemu/{snapshot,checkpoint}/<domain>/<name>.xml`
/// and the session equivalent under `<home>/.config/libvirt/qemu/...` (also
/// written `~/.config/...`), plus their `.xml.new` temp files.
pub fn classify_libvirt_path(path: &str) -> Option<LibvirtFile> {
    // Most paths are images: their last component tells at once, before any splitting.
    let last = path.trim_end_matches('/');
    if !last.ends_with(".xml") && !last.ends_with(".xml.new") {
        return None;
    }
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    // Dot components could make a lookalike resolve elsewhere: refuse them.
    if comps.iter().any(|c| *c == "." || *c == "..") || comps.len() < 6 {
        return None;
    }
    let n = comps.len();
    let (file, domain, kind_dir) = (comps[n - 1], comps[n - 2], comps[n - 3]);
    if comps[n - 5..n - 3] != ["libvirt", "qemu"] {
        return None;
    }
    let prefix = &comps[..n - 5];
    let scope = if path.starts_with('/') && prefix == ["var", "lib"] {
        LibvirtScope::System
    } else if prefix.last() == Some(&".config")
        && (path.starts_with('/') || (path.starts_with("~/") && prefix.len() == 2))
    {
        LibvirtScope::Session
    } else {
        return None;
    };
    let kind = match kind_dir {
        "snapshot" => LibvirtKind::Snapshot,
        "checkpoint" => LibvirtKind::Checkpoint,
        _ => return None,
    };
    let (stem, temp) = match file.strip_suffix(".xml.new") {
        Some(s) => (s, true),
        None => (file.strip_suffix(".xml")?, false),
    };
    if stem.is_empty() {
        return None;
    }
    Some(LibvirtFile {
        kind,
        scope,
        domain: domain.to_string(),
        name: stem.to_string(),
        temp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNAP_INTERNAL: &str = r#"<!--
WARNING: THIS IS AN AUTO-GENERATED FILE. CHANGES TO IT ARE LIKELY TO BE
OVERWRITTEN AND LOST. Changes to this xml configuration should be made using:
  virsh snapshot-edit
or other application using the libvirt API.
-->

<domainsnapshot>
  <name>pre-upgrade</name>
  <description>before apt &amp; kernel upgrade</description>
  <state>running</state>
  <parent>
    <name>base-install</name>
  </parent>
  <creationTime>1732812345</creationTime>
  <memory snapshot='internal'/>
  <disks>
    <disk name='vda' snapshot='internal'/>
    <disk name='sda' snapshot='no'/>
  </disks>
  <domain type='kvm'>
    <name>web01</name>
    <uuid>5f1c0a3e-9b2d-4f7e-8a61-2c3d4e5f6a7b</uuid>
    <memory unit='KiB'>2097152</memory>
    <currentMemory unit='KiB'>2097152</currentMemory>
    <vcpu placement='static'>2</vcpu>
    <os>
      <type arch='x86_64' machine='pc-q35-8.2'>hvm</type>
      <boot dev='hd'/>
    </os>
    <devices>
      <emulator>/usr/bin/qemu-system-x86_64</emulator>
      <disk type='file' device='disk'>
        <driver name='qemu' type='qcow2'/>
        <source file='/var/lib/libvirt/images/web01.qcow2'/>
        <target dev='vda' bus='virtio'/>
      </disk>
    </devices>
  </domain>
  <active>1</active>
</domainsnapshot>
"#;

    const SNAP_EXTERNAL: &str = r#"<domainsnapshot>
  <name>nightly-2024-11-28</name>
  <state>disk-snapshot</state>
  <creationTime>1732780800</creationTime>
  <memory snapshot='no'/>
  <disks>
    <disk name='vda' snapshot='external' type='file'>
      <driver type='qcow2'/>
      <source file='/var/lib/libvirt/images/db01.nightly-2024-11-28'/>
    </disk>
    <disk name='vdb' snapshot='external' type='block'>
      <driver type='qcow2'/>
      <source dev='/dev/vg0/db01-data-snap'/>
    </disk>
  </disks>
  <domain type='kvm'>
    <name>db01</name>
    <uuid>0e3f6c51-7d0a-4b8e-9c1f-aa55bb66cc77</uuid>
  </domain>
</domainsnapshot>
"#;

    const CHECKPOINT: &str = r#"<domaincheckpoint>
  <name>cp-0002</name>
  <description>incremental backup point</description>
  <parent>
    <name>cp-0001</name>
  </parent>
  <creationTime>1732800000</creationTime>
  <disks>
    <disk name='vda' checkpoint='bitmap' bitmap='cp-0002'/>
    <disk name='vdb' checkpoint='no'/>
  </disks>
  <domain type='kvm'>
    <name>backup-target</name>
    <uuid>11111111-2222-3333-4444-555555555555</uuid>
  </domain>
</domaincheckpoint>
"#;

    struct Xorshift(u64);
    impl Xorshift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
    }

    #[test]
    fn internal_snapshot() {
        let d = parse_libvirt_xml(SNAP_INTERNAL.as_bytes()).unwrap();
        assert_eq!(d.kind, LibvirtKind::Snapshot);
        assert_eq!(d.name, "pre-upgrade");
        assert_eq!(d.parent.as_deref(), Some("base-install"));
        assert_eq!(
            d.description.as_deref(),
            Some("before apt & kernel upgrade")
        );
        assert_eq!(d.domain_name.as_deref(), Some("web01"));
        assert_eq!(
            d.domain_uuid.as_deref(),
            Some("5f1c0a3e-9b2d-4f7e-8a61-2c3d4e5f6a7b")
        );
        assert_eq!(d.creation_time, Some(1732812345));
        assert_eq!(d.state.as_deref(), Some("running"));
        assert_eq!(d.memory_mode.as_deref(), Some("internal"));
        assert!(d.current);
        assert_eq!(d.disks.len(), 2);
        assert_eq!(d.disks[0].name, "vda");
        assert_eq!(d.disks[0].mode.as_deref(), Some("internal"));
        assert_eq!(d.disks[0].source, None);
        assert_eq!(d.disks[1].mode.as_deref(), Some("no"));
    }

    #[test]
    fn external_snapshot() {
        let d = parse_libvirt_xml(SNAP_EXTERNAL.as_bytes()).unwrap();
        assert_eq!(d.name, "nightly-2024-11-28");
        assert_eq!(d.parent, None);
        assert_eq!(d.description, None);
        assert!(!d.current);
        assert_eq!(d.state.as_deref(), Some("disk-snapshot"));
        assert_eq!(d.domain_name.as_deref(), Some("db01"));
        assert_eq!(d.disks[0].mode.as_deref(), Some("external"));
        assert_eq!(
            d.disks[0].source.as_deref(),
            Some("/var/lib/libvirt/images/db01.nightly-2024-11-28")
        );
        assert_eq!(d.disks[0].driver_type.as_deref(), Some("qcow2"));
        assert_eq!(
            d.disks[1].source.as_deref(),
            Some("/dev/vg0/db01-data-snap")
        );
        let js = serde_json::to_value(&d).unwrap();
        assert_eq!(js["kind"], "snapshot");
        assert_eq!(js["disks"][1]["name"], "vdb");
    }

    #[test]
    fn checkpoint() {
        let d = parse_libvirt_xml(CHECKPOINT.as_bytes()).unwrap();
        assert_eq!(d.kind, LibvirtKind::Checkpoint);
        assert_eq!(d.name, "cp-0002");
        assert_eq!(d.parent.as_deref(), Some("cp-0001"));
        assert_eq!(d.domain_name.as_deref(), Some("backup-target"));
        assert_eq!(d.creation_time, Some(1732800000));
        assert_eq!(d.state, None);
        assert_eq!(d.disks[0].mode.as_deref(), Some("bitmap"));
        assert_eq!(d.disks[0].bitmap.as_deref(), Some("cp-0002"));
        assert_eq!(d.disks[1].mode.as_deref(), Some("no"));
    }

    #[test]
    fn name_comes_from_root_not_domain() {
        let x = "<domainsnapshot><domain><name>vm</name></domain></domainsnapshot>";
        assert_eq!(
            parse_libvirt_xml(x.as_bytes()),
            Err(LibvirtError::MissingName)
        );
    }

    #[test]
    fn errors() {
        assert!(matches!(
            parse_libvirt_xml(b"<domain><name>x</name></domain>"),
            Err(LibvirtError::UnexpectedRoot(r)) if r == "domain"
        ));
        assert!(matches!(
            parse_libvirt_xml(b"<domainsnapshot><name>x</name>"),
            Err(LibvirtError::Xml(_))
        ));
        assert_eq!(
            parse_libvirt_xml(b"<domainsnapshot>\xff</domainsnapshot>"),
            Err(LibvirtError::NotUtf8)
        );
        let big = vec![b' '; MAX_XML_SIZE + 1];
        assert_eq!(
            parse_libvirt_xml(&big),
            Err(LibvirtError::TooLarge(MAX_XML_SIZE + 1))
        );
        // DTD entity expansion is refused outright.
        let dtd =
            r#"<!DOCTYPE d [<!ENTITY a "aaaa">]><domainsnapshot><name>&a;</name></domainsnapshot>"#;
        assert!(matches!(
            parse_libvirt_xml(dtd.as_bytes()),
            Err(LibvirtError::Xml(_))
        ));
    }

    #[test]
    fn disk_cap() {
        let mut x = String::from("<domainsnapshot><name>s</name><disks>");
        for i in 0..MAX_DISKS + 5 {
            x.push_str(&format!("<disk name='d{i}' snapshot='internal'/>"));
        }
        x.push_str("</disks></domainsnapshot>");
        let d = parse_libvirt_xml(x.as_bytes()).unwrap();
        assert_eq!(d.disks.len(), MAX_DISKS);
        assert!(d.disks_truncated);
    }

    #[test]
    fn paths() {
        let f =
            classify_libvirt_path("/var/lib/libvirt/qemu/snapshot/web01/pre-upgrade.xml").unwrap();
        assert_eq!(
            f,
            LibvirtFile {
                kind: LibvirtKind::Snapshot,
                scope: LibvirtScope::System,
                domain: "web01".into(),
                name: "pre-upgrade".into(),
                temp: false
            }
        );
        let f = classify_libvirt_path("/var/lib/libvirt/qemu/checkpoint/vm/cp1.xml.new").unwrap();
        assert_eq!(f.kind, LibvirtKind::Checkpoint);
        assert!(f.temp);
        assert_eq!(f.name, "cp1");
        let f =
            classify_libvirt_path("/home/alice/.config/libvirt/qemu/snapshot/dev/s1.xml").unwrap();
        assert_eq!(f.scope, LibvirtScope::Session);
        assert_eq!(f.domain, "dev");
        let f = classify_libvirt_path("~/.config/libvirt/qemu/checkpoint/dev/c.xml.new").unwrap();
        assert_eq!(
            (f.scope, f.kind, f.temp),
            (LibvirtScope::Session, LibvirtKind::Checkpoint, true)
        );
        assert!(classify_libvirt_path("//var//lib/libvirt/qemu/snapshot/a/b.xml").is_some());

        for bad in [
            "/var/lib/libvirt/qemu/web01.xml",
            "/etc/libvirt/qemu/web01.xml",
            "/var/lib/libvirt/qemu/save/web01/x.xml",
            "/var/lib/libvirt/qemu/snapshot/web01/x.txt",
            "/var/lib/libvirt/qemu/snapshot/web01/.xml",
            "/var/lib/libvirt/qemu/snapshot/web01",
            "/var/lib/libvirt/qemu/snapshot/../snapshot/a/b.xml",
            "/var/lib/libvirt/qemu/snapshot/web01/./b.xml",
            "/var/lib/libvirt/qemu/snapshot/../b.xml",
            "/var/lib/libvirt/qemu/checkpoint/./b.xml.new",
            "var/lib/libvirt/qemu/snapshot/a/b.xml",
            "/srv/var/lib/libvirt/qemu/snapshot/a/b.xml",
            "/home/alice/config/libvirt/qemu/snapshot/a/b.xml",
            "~/x/.config/libvirt/qemu/snapshot/a/b.xml",
            "",
            "/",
        ] {
            assert_eq!(classify_libvirt_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn prefixes_and_mutations_never_panic() {
        for doc in [SNAP_INTERNAL, SNAP_EXTERNAL, CHECKPOINT] {
            let b = doc.as_bytes();
            for n in 0..=b.len() {
                let r = parse_libvirt_xml(&b[..n]);
                if n + 1 < b.trim_ascii_end().len() {
                    // Only the complete document (modulo trailing space) parses.
                    assert!(r.is_err(), "prefix {n} parsed");
                }
            }
        }
        let mut rng = Xorshift(0x1234_5678_9abc_def1);
        let bases = [SNAP_INTERNAL, SNAP_EXTERNAL, CHECKPOINT];
        for i in 0..2000 {
            let mut v = bases[i % 3].as_bytes().to_vec();
            for _ in 0..1 + rng.next() % 4 {
                let j = (rng.next() % v.len() as u64) as usize;
                match rng.next() % 3 {
                    0 => v[j] = rng.next() as u8,
                    1 => v[j] = b"<>/='\"&"[(rng.next() % 7) as usize],
                    _ => {
                        v.remove(j);
                    }
                }
            }
            let _ = parse_libvirt_xml(&v);
            let p = String::from_utf8_lossy(&v[..(rng.next() % 80) as usize]).into_owned();
            let _ = classify_libvirt_path(&p);
        }
    }
}
