//! ZFS for `vm-test`: OpenZFS modules built against a guest kernel's headers, plus its userland, from Debian's contrib packages, cached under `target/vm-test/cache/zfs-<version>-<release>/`.
//!
//! Debian ships ZFS only as `zfs-dkms` in contrib, which the host's apt sources lack, and the
//! host kernel (6.18) is newer than any of it supports: so contrib is read through a private
//! apt state under the cache (never the host's), the packages are only downloaded and
//! extracted, and the modules are built for the guest kernel, never installed.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context as _};

use crate::check;

/// Which OpenZFS a kernel series gets: a suite of Debian's contrib, and the userland
/// libraries `zfsutils-linux` needs from it.
struct Source {
    series: &'static str,
    suite: &'static str,
    libs: &'static [&'static str],
}

/// bookworm's 2.1.11 supports kernels up to 6.2, so the 6.1 guest gets it (what a bookworm
/// host runs); 6.12 needs backports' 2.3.
const SOURCES: &[Source] = &[
    Source {
        series: "6.1",
        suite: "bookworm",
        libs: &[
            "libzfs4linux",
            "libzpool5linux",
            "libnvpair3linux",
            "libuutil3linux",
        ],
    },
    Source {
        series: "6.12",
        suite: "bookworm-backports",
        libs: &[
            "libzfs6linux",
            "libzpool6linux",
            "libnvpair3linux",
            "libuutil3linux",
        ],
    },
];

/// What the guest gets: `modules/` (the .ko files and `order`) and `userland/` (the
/// extracted zfsutils-linux and its libraries).
pub struct Zfs {
    pub dir: PathBuf,
    pub version: String,
    /// Seconds the module build took; `None` when it came from the cache.
    pub built_secs: Option<u64>,
}

/// Why the series gets no ZFS, for the guest to print (`Ok(None)` from [`prepare`]).
pub fn unsupported(series: &str) -> Option<String> {
    if SOURCES.iter().any(|s| s.series == series) {
        return None;
    }
    Some(format!(
        "no OpenZFS is configured for the {series} series (xtask/src/zfs.rs SOURCES)"
    ))
}

/// Download, build (once) and cache ZFS for the guest kernel `release` of `series`.
pub fn prepare(series: &str, release: &str, cache: &Path) -> anyhow::Result<Zfs> {
    let src = SOURCES
        .iter()
        .find(|s| s.series == series)
        .with_context(|| unsupported(series).unwrap_or_default())?;
    let debs = cache.join(format!("zfs-debs-{}", src.suite));
    if !debs.join(".done").exists() {
        download(src, &debs, cache)?;
    }
    let dkms = find_deb(&debs, "zfs-dkms")?;
    let version = deb_field(&dkms, "Version")?;
    let dir = cache.join(format!("zfs-{version}-{release}"));
    if dir.join(".done").exists() {
        return Ok(Zfs {
            dir,
            version,
            built_secs: None,
        });
    }
    let tmp = cache.join(format!(".zfs-{version}-{release}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;

    // Kernel headers of exactly the guest's ABI, from the host's (main) apt sources.
    let tree = tmp.join("tree");
    let hdr = format!("linux-headers-{release}");
    let mut hdr_debs = vec![crate::vm::deb(&hdr, cache)?];
    for dep in deb_field(&hdr_debs[0], "Depends")?.split(',') {
        let name = dep.split_whitespace().next().unwrap_or("");
        if name.starts_with("linux-headers-") || name.starts_with("linux-kbuild-") {
            hdr_debs.push(crate::vm::deb(name, cache)?);
        }
    }
    for d in hdr_debs.iter().chain([&dkms]) {
        check(Command::new("dpkg-deb").arg("-x").arg(d).arg(&tree))?;
    }
    let obj = tree.join(format!("usr/src/{hdr}"));
    let common = common_headers(&obj, &tree)?;

    let srcdir = single_dir(&tree.join("usr/src"), "zfs-")?;
    let build = tmp.join("build");
    check(Command::new("cp").arg("-a").arg(&srcdir).arg(&build))?;
    let log = tmp.join("build.log");
    let t0 = Instant::now();
    println!(
        "vm-test: building OpenZFS {version} modules for {release} (log: {})",
        dir.join("build.log").display()
    );
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    logged(
        Command::new("./configure")
            .arg("--with-config=kernel")
            .arg(format!("--with-linux={}", common.display()))
            .arg(format!("--with-linux-obj={}", obj.display()))
            .current_dir(&build),
        &log,
    )?;
    logged(
        Command::new("make")
            .args(["-C", "module", &format!("-j{jobs}")])
            .current_dir(&build),
        &log,
    )?;
    let secs = t0.elapsed().as_secs();
    println!("vm-test: OpenZFS {version} modules for {release} built in {secs} s");

    let mods = tmp.join("modules");
    std::fs::create_dir_all(&mods)?;
    let mut kos = vec![];
    collect_ko(&build.join("module"), &mut kos)?;
    if kos.is_empty() {
        bail!("the build left no .ko under {}", build.display());
    }
    for k in &kos {
        std::fs::copy(k, mods.join(k.file_name().unwrap()))?;
    }
    std::fs::write(mods.join("order"), load_order(&mods)?)?;

    let user = tmp.join("userland");
    for p in ["zfsutils-linux"].iter().chain(src.libs) {
        check(
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(find_deb(&debs, p)?)
                .arg(&user),
        )?;
    }
    std::fs::write(tmp.join("build-secs"), format!("{secs}\n"))?;
    // The headers and the build tree are only needed to build (hundreds of MB).
    std::fs::remove_dir_all(&tree)?;
    std::fs::remove_dir_all(&build)?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir)?;
    std::fs::write(dir.join(".done"), "")?;
    Ok(Zfs {
        dir,
        version,
        built_secs: Some(secs),
    })
}

/// `zfs-dkms` and the userland of `src.suite`'s contrib, via a private apt state (the host's
/// sources and lists stay untouched).
fn download(src: &Source, debs: &Path, cache: &Path) -> anyhow::Result<()> {
    let apt = cache.join("zfs-apt");
    let parts = apt.join("sources.list.d");
    std::fs::create_dir_all(apt.join("lists/partial"))?;
    std::fs::create_dir_all(apt.join("cache/archives/partial"))?;
    std::fs::create_dir_all(&parts)?;
    std::fs::write(
        parts.join("contrib.sources"),
        format!(
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: {}\nComponents: contrib\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
            src.suite
        ),
    )?;
    let opts = [
        "-o".to_string(),
        "Dir::Etc::SourceList=/dev/null".into(),
        "-o".into(),
        format!("Dir::Etc::SourceParts={}", parts.display()),
        "-o".into(),
        format!("Dir::State::Lists={}", apt.join("lists").display()),
        "-o".into(),
        format!("Dir::Cache={}", apt.join("cache").display()),
        // Root downloads into the cache dir, which `_apt` cannot write: say so up front
        // instead of a warning per package.
        "-o".into(),
        "APT::Sandbox::User=root".into(),
        "-q".into(),
    ];
    println!("vm-test: fetching OpenZFS from {} contrib", src.suite);
    check(Command::new("apt-get").args(&opts).arg("update"))
        .context("apt-get update of the private contrib lists")?;
    let tmp = debs.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let pkgs: Vec<String> = ["zfs-dkms", "zfsutils-linux"]
        .iter()
        .chain(src.libs)
        .map(|p| format!("{p}/{}", src.suite))
        .collect();
    check(
        Command::new("apt-get")
            .args(&opts)
            .arg("download")
            .args(&pkgs)
            .current_dir(&tmp),
    )
    .with_context(|| format!("apt-get download {pkgs:?}"))?;
    let _ = std::fs::remove_dir_all(debs);
    std::fs::rename(&tmp, debs)?;
    std::fs::write(debs.join(".done"), "")?;
    Ok(())
}

fn find_deb(dir: &Path, pkg: &str) -> anyhow::Result<PathBuf> {
    std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with(&format!("{pkg}_")))
        })
        .with_context(|| format!("no {pkg}_*.deb in {}", dir.display()))
}

fn deb_field(deb: &Path, field: &str) -> anyhow::Result<String> {
    let o = Command::new("dpkg-deb")
        .arg("-f")
        .arg(deb)
        .arg(field)
        .output()
        .context("dpkg-deb -f")?;
    if !o.status.success() {
        bail!("dpkg-deb -f {} {field} failed", deb.display());
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// The arch headers' Makefile is one `include /usr/src/linux-headers-…-common/Makefile`,
/// an absolute path into a tree that is not installed: point it into the extracted one.
fn common_headers(obj: &Path, tree: &Path) -> anyhow::Result<PathBuf> {
    let mk = obj.join("Makefile");
    let text = std::fs::read_to_string(&mk).with_context(|| format!("reading {}", mk.display()))?;
    let inc = text
        .lines()
        .find_map(|l| l.strip_prefix("include /"))
        .with_context(|| format!("no absolute include in {}", mk.display()))?;
    let common = tree.join(inc.trim()).parent().unwrap().to_path_buf();
    if !common.join("Makefile").exists() {
        bail!("{} is not in the extracted headers", common.display());
    }
    std::fs::write(
        &mk,
        text.replace("include /", &format!("include {}/", tree.display())),
    )?;
    Ok(common)
}

fn single_dir(parent: &Path, prefix: &str) -> anyhow::Result<PathBuf> {
    std::fs::read_dir(parent)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with(prefix))
        })
        .with_context(|| format!("no {prefix}* in {}", parent.display()))
}

/// Run with stdout and stderr appended to `log`; on failure, its tail is in the error.
fn logged(cmd: &mut Command, log: &Path) -> anyhow::Result<()> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let st = cmd
        .stdout(f.try_clone()?)
        .stderr(f)
        .status()
        .with_context(|| format!("spawning {cmd:?}"))?;
    if !st.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(25).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "{cmd:?} failed: {st}; end of {}:\n{}",
            log.display(),
            tail.join("\n")
        );
    }
    Ok(())
}

fn collect_ko(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir)?.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_ko(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "ko") {
            out.push(p);
        }
    }
    Ok(())
}

/// Our modules in dependency order (from `modinfo -F depends`), one name a line; a
/// dependency that is not ours is the guest kernel's, written `kernel:<name>` for modprobe.
fn load_order(mods: &Path) -> anyhow::Result<String> {
    let mut deps = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(mods)?.flatten() {
        let p = e.path();
        let Some(name) = p
            .file_name()
            .and_then(|f| f.to_str())
            .and_then(|f| f.strip_suffix(".ko"))
        else {
            continue;
        };
        let o = Command::new("modinfo")
            .args(["-F", "depends"])
            .arg(&p)
            .output()
            .context("modinfo (kmod)")?;
        let d: Vec<String> = String::from_utf8_lossy(&o.stdout)
            .trim()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.replace('-', "_"))
            .collect();
        deps.insert(name.to_string(), d);
    }
    let mut out: Vec<String> = vec![];
    fn visit(
        n: &str,
        deps: &std::collections::BTreeMap<String, Vec<String>>,
        out: &mut Vec<String>,
    ) {
        let line = if deps.contains_key(n) {
            n.to_string()
        } else {
            format!("kernel:{n}")
        };
        if out.contains(&line) {
            return;
        }
        for d in deps.get(n).into_iter().flatten() {
            visit(d, deps, out);
        }
        out.push(line);
    }
    for n in deps.keys() {
        visit(n, &deps, &mut out);
    }
    Ok(out.iter().map(|l| format!("{l}\n")).collect())
}
