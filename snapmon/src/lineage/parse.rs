//! Pure parsers used by the lineage stage: byte escaping, cgroup paths
//! (container id, systemd unit), QEMU command lines and tty numbers.

use serde::Serialize;

pub use crate::text::{escape_bytes, unescape_bytes};

/// Last path component of `path` (bytes after the last `/`).
pub(super) fn basename(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&c| c == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// Container reference derived from a cgroup path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerRef {
    /// `docker`, `containerd`, `cri-o`, `podman`, `cri` (kubepods with
    /// the cgroupfs driver), `systemd-nspawn` or `libvirt-lxc`.
    pub runtime: &'static str,
    pub id: String,
}

/// Parsed view of one cgroup path, shared between processes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CgroupInfo {
    pub path: String,
    pub container: Option<ContainerRef>,
    pub systemd_unit: Option<String>,
}

impl CgroupInfo {
    pub fn parse(path: &str) -> Self {
        CgroupInfo {
            path: path.to_string(),
            container: container_from_cgroup(path),
            systemd_unit: systemd_unit_from_cgroup(path),
        }
    }
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| c.is_ascii_hexdigit())
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && is_hex(s)
}

/// Derives the container from a cgroup path. The innermost (last) match wins
/// so nested runtimes report the container the process actually runs in.
/// `*-conmon-*` scopes are the runtime monitor, not the container, and
/// libvirt `machine-qemu…` scopes are VMs (identified from argv instead).
pub fn container_from_cgroup(path: &str) -> Option<ContainerRef> {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    for (i, c) in comps.iter().enumerate().rev() {
        let prev = if i > 0 { comps[i - 1] } else { "" };
        if let Some(id) = scope_id(c, "docker-") {
            if is_hex64(id) {
                return Some(ContainerRef {
                    runtime: "docker",
                    id: id.to_string(),
                });
            }
        }
        if prev == "docker" && is_hex64(c) {
            return Some(ContainerRef {
                runtime: "docker",
                id: c.to_string(),
            });
        }
        if let Some(id) = scope_id(c, "cri-containerd-") {
            if is_hex(id) {
                return Some(ContainerRef {
                    runtime: "containerd",
                    id: id.to_string(),
                });
            }
        }
        if let Some(id) = scope_id(c, "crio-") {
            if is_hex(id) {
                return Some(ContainerRef {
                    runtime: "cri-o",
                    id: id.to_string(),
                });
            }
        }
        if let Some(id) = scope_id(c, "libpod-") {
            if is_hex(id) {
                return Some(ContainerRef {
                    runtime: "podman",
                    id: id.to_string(),
                });
            }
        }
        // podman with the cgroupfs manager: /libpod_parent/libpod-<id>
        if let Some(id) = c.strip_prefix("libpod-") {
            if prev == "libpod_parent" && is_hex(id) {
                return Some(ContainerRef {
                    runtime: "podman",
                    id: id.to_string(),
                });
            }
        }
        if prev.starts_with("pod") && is_hex64(c) && comps.iter().any(|x| x.starts_with("kubepods"))
        {
            return Some(ContainerRef {
                runtime: "cri",
                id: c.to_string(),
            });
        }
        if prev == "machine.slice" {
            if let Some(esc) = scope_id(c, "machine-") {
                let name = unescape_systemd(esc);
                if name.starts_with("qemu-") {
                    return None;
                }
                let runtime = if name.starts_with("lxc-") {
                    "libvirt-lxc"
                } else {
                    "systemd-nspawn"
                };
                return Some(ContainerRef { runtime, id: name });
            }
        }
    }
    None
}

/// `prefix<id>.scope` → `<id>`.
fn scope_id<'a>(comp: &'a str, prefix: &str) -> Option<&'a str> {
    comp.strip_prefix(prefix)?.strip_suffix(".scope")
}

/// Undoes systemd unit-name escaping (`\x2d` → `-`).
fn unescape_systemd(s: &str) -> String {
    String::from_utf8_lossy(&unescape_bytes(s)).into_owned()
}

/// The last `*.service` / `*.scope` component of a cgroup path, as systemd
/// names it (still escaped); sub-cgroups below a unit (`libvirt/vcpu0`) are
/// skipped because they are not units.
pub fn systemd_unit_from_cgroup(path: &str) -> Option<String> {
    path.split('/')
        .rev()
        .find(|c| c.len() > 6 && (c.ends_with(".service") || c.ends_with(".scope")))
        .map(str::to_string)
}

/// Identity of a virtual machine, taken from a QEMU command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmIdentity {
    pub name: Option<String>,
    pub uuid: Option<String>,
}

/// True for `qemu-system-*` and `qemu-kvm` (by exe or argv[0] basename).
pub fn is_qemu(exe: &[u8], argv0: Option<&[u8]>) -> bool {
    let check = |p: &[u8]| {
        let b = basename(p);
        b.starts_with(b"qemu-system-") || b == b"qemu-kvm"
    };
    check(exe) || argv0.is_some_and(check)
}

/// Parses `-name guest=NAME,...` / `-name NAME[,...]` and `-uuid UUID` for a
/// QEMU process; `None` when the process is not QEMU. Must be given the full
/// argv (before truncation) because libvirt command lines are long.
pub fn parse_qemu_vm<A: AsRef<[u8]>>(exe: &[u8], argv: &[A]) -> Option<VmIdentity> {
    if !is_qemu(exe, argv.first().map(|a| a.as_ref())) {
        return None;
    }
    let mut vm = VmIdentity {
        name: None,
        uuid: None,
    };
    let mut it = argv.iter().skip(1).map(|a| a.as_ref());
    while let Some(a) = it.next() {
        match a {
            b"-name" | b"--name" => {
                if let Some(v) = it.next() {
                    vm.name = qemu_name(v);
                }
            }
            b"-uuid" | b"--uuid" => {
                if let Some(v) = it.next() {
                    vm.uuid = Some(escape_bytes(v));
                }
            }
            _ => {}
        }
    }
    Some(vm)
}

/// QEMU option string: comma separated, `,,` is a literal comma, and a first
/// element without `=` is the implied `guest=` key.
fn qemu_name(v: &[u8]) -> Option<String> {
    let mut parts: Vec<Vec<u8>> = vec![Vec::new()];
    let mut i = 0;
    while i < v.len() {
        if v[i] == b',' {
            if v.get(i + 1) == Some(&b',') {
                parts.last_mut().unwrap().push(b',');
                i += 2;
                continue;
            }
            parts.push(Vec::new());
        } else {
            parts.last_mut().unwrap().push(v[i]);
        }
        i += 1;
    }
    for (idx, p) in parts.iter().enumerate() {
        if let Some(name) = p.strip_prefix(b"guest=") {
            return Some(escape_bytes(name));
        }
        if idx == 0 && !p.contains(&b'=') && !p.is_empty() {
            return Some(escape_bytes(p));
        }
    }
    None
}

/// Controlling terminal decoded from `/proc/<pid>/stat` `tty_nr`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tty {
    pub nr: u32,
    /// `pts/N`, `ttyN` or `ttySN` when the major number is a well-known one.
    pub name: Option<String>,
}

impl Tty {
    /// `None` for `tty_nr == 0` (no controlling terminal).
    pub fn from_nr(nr: u32) -> Option<Tty> {
        if nr == 0 {
            return None;
        }
        // Kernel `new_encode_dev` layout: minor low 8 bits + bits 20..31.
        let major = (nr >> 8) & 0xfff;
        let minor = (nr & 0xff) | ((nr >> 12) & 0xfff00);
        let name = match major {
            136..=143 => Some(format!("pts/{}", (major - 136) * 256 + minor)),
            4 if minor < 64 => Some(format!("tty{minor}")),
            4 => Some(format!("ttyS{}", minor - 64)),
            _ => None,
        };
        Some(Tty { nr, name })
    }
}
