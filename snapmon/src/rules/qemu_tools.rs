//! Rules stage, QEMU's own tools: qemu-io, qemu-nbd and qemu-storage-daemon write an image
//! through the QEMU block layer, whose qcow2 driver keeps metadata consistent, so they are
//! the `qemu` group; opened with the raw driver they write the file's bytes as given (a
//! header edit like any other), and then they are not. qemu-io is a debugging tool: its
//! writes to a production image are noted (info), not trusted in silence.

use std::collections::HashMap;

/// Tools trusted as `qemu` only while a format driver sits on top of the image.
pub const BLOCK_TOOLS: &[Tool] = &[Tool::QemuIo, Tool::QemuNbd, Tool::QemuStorageDaemon];

/// A QEMU tool the rules treat specially, by the basename of its trusted path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    QemuIo,
    QemuNbd,
    QemuStorageDaemon,
}

impl Tool {
    pub fn of_path(path: &str) -> Option<Tool> {
        match path.rsplit('/').next().unwrap_or(path) {
            "qemu-io" => Some(Tool::QemuIo),
            "qemu-nbd" => Some(Tool::QemuNbd),
            "qemu-storage-daemon" => Some(Tool::QemuStorageDaemon),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Tool::QemuIo => "qemu-io",
            Tool::QemuNbd => "qemu-nbd",
            Tool::QemuStorageDaemon => "qemu-storage-daemon",
        }
    }

    /// A debugging tool: routine for QEMU's developers, unusual on a production image.
    pub fn is_debug(self) -> bool {
        self == Tool::QemuIo
    }
}

/// Drivers that expose an image's bytes as they are (no format on top).
const PROTOCOL: &[&str] = &["file", "host_device", "host_cdrom"];

/// `key=value,key=value` (QEMU's option syntax) or a JSON object (`{"driver": "file", …}`),
/// flattened to the top-level pairs; nested JSON objects become `key=<object text>`.
fn option_pairs(s: &str) -> Vec<(String, String)> {
    let t = s.trim();
    let t = t.strip_prefix("json:").unwrap_or(t);
    if t.starts_with('{') {
        let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(t) else {
            return Vec::new();
        };
        return m
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, v)
            })
            .collect();
    }
    t.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Does this command line of a QEMU block-layer tool open an image without a format
/// driver, so that its writes land as raw bytes in the qcow2 file?
///
/// Raw when `-f raw` (`--format raw`, `--format=raw`, `-fraw`, also in qemu-io's `-c "open
/// -f raw …"`), when an option string (`--image-opts`, `--blockdev`, `open -o`) names
/// `driver=raw`, or when it names a protocol driver (`file`, `host_device`) that is exported
/// or that no format node uses as its `file=`. With no `-f`, QEMU probes the format, which
/// for a qcow2 file is qcow2.
pub fn opens_raw(args: &[&[u8]]) -> bool {
    let words: Vec<String> = args
        .iter()
        .flat_map(|a| {
            String::from_utf8_lossy(a)
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    for (i, w) in words.iter().enumerate() {
        let fmt = if w == "-f" || w == "--format" {
            words.get(i + 1).map(String::as_str)
        } else if let Some(v) = w.strip_prefix("--format=") {
            Some(v)
        } else if !w.starts_with("--") {
            w.strip_prefix("-f").filter(|v| !v.is_empty())
        } else {
            None
        };
        if fmt == Some("raw") {
            return true;
        }
    }
    // node-name → driver, format nodes' `file=` references, exported node names.
    let mut nodes: HashMap<String, String> = HashMap::new();
    let mut used_as_file: Vec<String> = Vec::new();
    let mut exported: Vec<String> = Vec::new();
    let mut anonymous_protocol = false;
    for w in &words {
        let pairs = option_pairs(w);
        let get = |k: &str| pairs.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str());
        match (get("driver"), get("type")) {
            (Some("raw"), _) => return true,
            (Some(d), _) => {
                let protocol = PROTOCOL.contains(&d);
                match get("node-name") {
                    Some(n) => {
                        nodes.insert(n.to_string(), d.to_string());
                    }
                    None if protocol => anonymous_protocol = true,
                    None => {}
                }
                if !protocol {
                    if let Some(f) = get("file") {
                        used_as_file.push(f.to_string());
                    }
                }
            }
            // `--export type=nbd,node-name=X` (qemu-storage-daemon).
            (None, Some(_)) => exported.extend(get("node-name").map(str::to_string)),
            _ => {}
        }
    }
    if anonymous_protocol {
        return true;
    }
    nodes.iter().any(|(n, d)| {
        PROTOCOL.contains(&d.as_str()) && (exported.contains(n) || !used_as_file.contains(n))
    })
}

/// The device of `qemu-nbd -c DEV` / `--connect=DEV` / `--connect DEV` / `-cDEV`, if the
/// command line connects one (else it serves a socket or port).
pub fn nbd_device(args: &[&[u8]]) -> Option<String> {
    let words: Vec<String> = args
        .iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    for (i, w) in words.iter().enumerate() {
        if w == "-c" || w == "--connect" {
            return words.get(i + 1).cloned();
        }
        if let Some(d) = w.strip_prefix("--connect=") {
            return Some(d.to_string());
        }
        if let Some(d) = w.strip_prefix("-c").filter(|d| d.starts_with('/')) {
            return Some(d.to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connected_nbd_device_in_each_spelling_and_none_for_an_export() {
        let dev = |cmd: &str| {
            let v: Vec<&[u8]> = cmd.split(' ').map(str::as_bytes).collect();
            nbd_device(&v)
        };
        for cmd in [
            "qemu-nbd -c /dev/nbd0 -f qcow2 /s/vm.qcow2",
            "qemu-nbd --connect /dev/nbd0 /s/vm.qcow2",
            "qemu-nbd --connect=/dev/nbd0 /s/vm.qcow2",
            "qemu-nbd -c/dev/nbd0 /s/vm.qcow2",
        ] {
            assert_eq!(dev(cmd).as_deref(), Some("/dev/nbd0"), "{cmd}");
        }
        assert_eq!(dev("qemu-nbd -k /tmp/s -f qcow2 /s/vm.qcow2"), None);
        assert_eq!(dev("qemu-nbd --cache=none -p 10809 /s/vm.qcow2"), None);
    }

    fn raw(cmd: &str) -> bool {
        let v: Vec<&[u8]> = cmd.split(' ').map(str::as_bytes).collect();
        opens_raw(&v)
    }

    #[test]
    fn format_driver_on_top_is_consistent_and_raw_access_is_not() {
        // The block layer's qcow2 driver (probed or named): consistent metadata.
        assert!(!raw("qemu-io -c write -P 0xab 0 64k /s/vm.qcow2"));
        assert!(!raw("qemu-io -f qcow2 -c write 0 4k /s/vm.qcow2"));
        assert!(!raw(
            "qemu-io --image-opts driver=qcow2,file.driver=file,file.filename=/s/vm.qcow2"
        ));
        assert!(!raw("qemu-nbd -c /dev/nbd0 /s/vm.qcow2"));
        assert!(!raw(
            "qemu-storage-daemon --blockdev driver=file,node-name=f,filename=/s/vm.qcow2 \
             --blockdev driver=qcow2,node-name=q,file=f --export type=nbd,id=e,node-name=q,writable=on"
        ));
        // Raw bytes of the qcow2 file: a header edit.
        assert!(raw("qemu-io -f raw -c write -P 0 60 4 /s/vm.qcow2"));
        assert!(raw("qemu-io -fraw -c write 0 4 /s/vm.qcow2"));
        assert!(raw("qemu-io --format=raw /s/vm.qcow2"));
        assert!(raw("qemu-nbd --format raw -c /dev/nbd0 /s/vm.qcow2"));
        assert!(raw("qemu-io --image-opts driver=file,filename=/s/vm.qcow2"));
        assert!(raw(
            "qemu-io --image-opts driver=raw,file.filename=/s/vm.qcow2"
        ));
        assert!(raw(
            r#"qemu-io --image-opts json:{"driver":"file","filename":"/s/vm.qcow2"}"#
        ));
        // In qemu-io's own commands: `-c "open -f raw …"` is one argument.
        assert!(opens_raw(&[
            b"qemu-io",
            b"-c",
            b"open -f raw /s/vm.qcow2",
            b"-c",
            b"write 0 4"
        ]));
        // The daemon exporting the file node beside the qcow2 one.
        assert!(raw(
            "qemu-storage-daemon --blockdev driver=file,node-name=f,filename=/s/vm.qcow2 \
             --blockdev driver=qcow2,node-name=q,file=f --export type=nbd,id=e,node-name=f,writable=on"
        ));
        // A protocol node nothing sits on.
        assert!(raw(
            "qemu-storage-daemon --blockdev driver=file,node-name=f,filename=/s/vm.qcow2 \
             --export type=fuse,id=e,node-name=f,mountpoint=/m,writable=on"
        ));
    }

    #[test]
    fn tools_are_named_by_their_trusted_path() {
        assert_eq!(Tool::of_path("/usr/bin/qemu-io"), Some(Tool::QemuIo));
        assert!(Tool::of_path("/usr/bin/qemu-io").unwrap().is_debug());
        assert!(!Tool::of_path("/usr/bin/qemu-nbd").unwrap().is_debug());
        assert_eq!(Tool::of_path("/usr/bin/qemu-img"), None);
        assert!(BLOCK_TOOLS
            .iter()
            .all(|t| Tool::of_path(t.name()) == Some(*t)));
    }
}
