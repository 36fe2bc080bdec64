//! Offline tools: `inspect`, `baseline`, `verify` — integrity checks of images at rest.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use crate::classify::{
    fileread,
    inspect::{self, BaselineEntry, Severity},
};

/// Exit codes: 0 clean, 1 findings/changes, 2 unreadable input.
fn exit(code: i32) -> ! {
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}

pub fn inspect(images: &[PathBuf], json: bool, fail_on: Severity) -> anyhow::Result<()> {
    let mut worst = 0;
    let mut reports = Vec::new();
    for img in images {
        // Never opened blocking or through a final symlink: a FIFO named like an image
        // would hang the inspection, a symlink could point anywhere.
        let f = match fileread::open(img) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("snapmon: {}", unreadable(img, &e));
                worst = 2;
                continue;
            }
        };
        let r = inspect::inspect_file(img, f);
        if r.has_findings_at_least(fail_on) && worst == 0 {
            worst = 1;
        }
        if json {
            reports.push(serde_json::to_value(&r)?);
        } else {
            println!("{r}");
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    exit(worst)
}

/// One sentence: why `path` was not inspected.
fn unreadable(path: &Path, e: &fileread::OpenError) -> String {
    let p = path.display();
    match e {
        fileread::OpenError::Io(e) => format!("{p}: {e}"),
        fileread::OpenError::NotRegular(kind) => format!(
            "{p} is a {kind}, not an image file: only regular files and block devices are read"
        ),
        fileread::OpenError::Symlink(to) => {
            format!("{p} is a symlink to {to}, which is not followed: name the image itself")
        }
    }
}

/// Regular files under `dirs` (bounded depth), sorted.
fn images_under(dirs: &[PathBuf]) -> Vec<PathBuf> {
    fn walk(d: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() && depth < 16 => walk(&p, depth + 1, out),
                Ok(m) if m.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    for d in dirs {
        if d.is_file() {
            out.push(d.clone());
        } else {
            walk(d, 0, &mut out);
        }
    }
    out.sort();
    out
}

pub fn baseline(dirs: &[PathBuf], out: &Path) -> anyhow::Result<()> {
    // A typo must not produce an empty baseline that `verify` then calls clean.
    for d in dirs {
        if let Err(e) = std::fs::metadata(d) {
            anyhow::bail!("cannot read {}: {e}", d.display());
        }
    }
    let mut entries = BTreeMap::new();
    for p in images_under(dirs) {
        match inspect::baseline_entry(&p) {
            Ok(e) => {
                entries.insert(e.path.clone(), e);
            }
            Err(e) => eprintln!("snapmon: skipping {}: {e}", p.display()),
        }
    }
    let doc = serde_json::json!({"snapmon_baseline": 1, "roots": dirs, "entries": entries});
    std::fs::write(out, serde_json::to_vec_pretty(&doc)?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("{}: {} files", out.display(), entries.len());
    Ok(())
}

pub fn verify(baseline: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read(baseline).with_context(|| format!("cannot read {}", baseline.display()))?;
    let doc: serde_json::Value = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a snapmon baseline", baseline.display()))?;
    let entries: BTreeMap<String, BaselineEntry> =
        serde_json::from_value(doc["entries"].clone())
            .with_context(|| format!("{}: malformed `entries`", baseline.display()))?;
    let roots: Vec<PathBuf> = serde_json::from_value(doc["roots"].clone()).unwrap_or_default();
    let mut changed = 0;
    for (path, old) in &entries {
        match inspect::baseline_entry(Path::new(path)) {
            Ok(new) => {
                let diffs = inspect::compare_baseline(old, &new);
                if !diffs.is_empty() {
                    changed += 1;
                    println!("CHANGED {path}");
                    for d in diffs {
                        println!("  {d}");
                    }
                }
            }
            Err(e) => {
                changed += 1;
                println!("MISSING {path}: {e}");
            }
        }
    }
    for p in images_under(&roots) {
        let s = p.display().to_string();
        if !entries.contains_key(&s) {
            changed += 1;
            println!("NEW {s}");
        }
    }
    if changed == 0 {
        println!("ok: {} files unchanged", entries.len());
        exit(0)
    }
    exit(1)
}
