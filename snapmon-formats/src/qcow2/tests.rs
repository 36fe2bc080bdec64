//! Tests against real qemu-img images and mutated bytes.

use std::borrow::Cow;
use std::io::{Read, Seek, SeekFrom};

use super::base::{align8, L1_OFFSET_MASK};
use super::testutil::*;
use super::*;
use crate::bytes::be_u64_padded;

#[test]
fn header_labels_need_no_formatting_and_say_what_formatting_would() {
    let names = HEADER_FIELDS
        .iter()
        .map(|f| f.0)
        .chain(["reserved", "padding"]);
    for name in names {
        let l = Region::Header(name).as_label();
        assert!(matches!(l, Cow::Borrowed(_)), "{name} is formatted");
        assert_eq!(l, format!("header.{name}"));
    }
    assert_eq!(Region::Header("other").as_label(), "header.other");
}
use std::time::{Duration, Instant};

fn labels(spans: &[RegionSpan]) -> Vec<String> {
    spans.iter().map(|s| s.region.to_string()).collect()
}

fn check_against_info(img: &Qcow2Image, info: &serde_json::Value) {
    assert_eq!(img.header.size, info["virtual-size"].as_u64().unwrap());
    assert_eq!(img.cluster_size(), info["cluster-size"].as_u64().unwrap());
    assert_eq!(
        img.backing_file.as_ref().map(|b| b.display()),
        info["backing-filename"].as_str().map(str::to_string)
    );
    let snaps = info["snapshots"].as_array().cloned().unwrap_or_default();
    assert_eq!(img.snapshots.len(), snaps.len());
    assert_eq!(img.header.nb_snapshots as usize, snaps.len());
    for (s, j) in img.snapshots.iter().zip(&snaps) {
        assert_eq!(s.name, j["name"].as_str().unwrap());
        assert_eq!(s.id, j["id"].as_str().unwrap());
        assert_eq!(u64::from(s.date_sec), j["date-sec"].as_u64().unwrap());
        assert_eq!(u64::from(s.date_nsec), j["date-nsec"].as_u64().unwrap());
        assert_eq!(
            s.vm_state_size_large.unwrap_or(s.vm_state_size.into()),
            j["vm-state-size"].as_u64().unwrap()
        );
        assert_eq!(s.icount, j["icount"].as_u64());
    }
}

#[test]
fn v3_create_matches_qemu_info() {
    let d = TmpDir::new("v3");
    qemu_img(&["create", "-q", "-f", "qcow2", &d.s("a.qcow2"), "64M"]);
    let img = load(&d.path("a.qcow2"));
    check_against_info(&img, &info(&d.path("a.qcow2")));
    let h = &img.header;
    assert_eq!(
        (h.magic, h.version, h.header_length, h.refcount_order),
        (QCOW2_MAGIC, 3, 112, 4)
    );
    assert_eq!(h.nb_snapshots, 0);
    assert_eq!(img.l1.len(), h.l1_size as usize);
    assert!(img.extension(EXT_FEATURE_NAMES).is_some());
    assert!(matches!(
        img.extensions.last().unwrap().data,
        ExtensionData::End
    ));
    assert_eq!(
        labels(&img.classify(60, 12)),
        ["header.nb_snapshots", "header.snapshots_offset"]
    );
    assert_eq!(
        labels(&img.classify(104, 8)),
        ["header.compression_type", "header.reserved"]
    );
    assert_eq!(
        labels(&img.classify(112, 4)),
        ["header.extension.feature_names"]
    );
    assert_eq!(labels(&img.classify(65536 - 8, 8)), ["header.padding"]);
}

#[test]
fn rewriting_a_field_with_its_value_is_a_noop_and_absorbing_a_change_keeps_the_map() {
    let d = TmpDir::new("noop");
    let p = d.s("a.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "preallocation=metadata",
        &p,
        "64M",
    ]);
    qemu_img(&["snapshot", "-c", "s1", &d.s("a.qcow2")]);
    let mut f = std::fs::File::open(d.path("a.qcow2")).unwrap();
    let mut sh = Qcow2Shadow::load(&mut f).unwrap();
    let same = sh.raw[60..72].to_vec();
    assert!(sh.is_noop_write(60, &same));
    assert!(!sh.is_noop_write(60, &[0, 0, 0, 0]));
    assert!(!sh.is_noop_write(u64::MAX, &same));
    // A changed field in place (dirty bit) is absorbed without touching the table sets.
    let l2 = sh.image.l2_tables();
    let p = sh.apply_header_write(72, &1u64.to_be_bytes()).unwrap();
    assert!(sh.absorb(p));
    assert_eq!(sh.image.header.incompatible_features, 1);
    assert_eq!(labels(&sh.image.classify(l2[0], 8)), ["l2"]);
    assert!(!sh.is_noop_write(72, &0u64.to_be_bytes()));
}

#[test]
fn v2_compat_defaults() {
    let d = TmpDir::new("v2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10",
        &d.s("a.qcow2"),
        "1M",
    ]);
    let img = load(&d.path("a.qcow2"));
    check_against_info(&img, &info(&d.path("a.qcow2")));
    let h = &img.header;
    assert_eq!(
        (
            h.version,
            h.header_length,
            h.refcount_order,
            h.incompatible_features
        ),
        (2, 72, 4, 0)
    );
    // v2 bytes 72.. are extensions, not v3 fields.
    assert_eq!(
        labels(&img.classify(68, 8)),
        ["header.snapshots_offset", "header.extension.end"]
    );
}

#[test]
fn snapshots_match_qemu_info_and_list() {
    let d = TmpDir::new("snap");
    let p = image_with_snapshots(&d, "a.qcow2", &[]);
    let img = load(&p);
    check_against_info(&img, &info(&p));
    let list = qemu_img(&["snapshot", "-l", &d.s("a.qcow2")]);
    for s in &img.snapshots {
        assert!(list.contains(&s.name), "{list}");
        assert_eq!(s.extra_data_size, 24);
        assert_eq!(s.disk_size, Some(64 << 20));
    }
    assert_eq!(img.snapshot_l1.len(), 2);
    assert!(img.snapshot_l1.iter().all(|l| l.iter().any(|&e| e != 0)));
    let e = &img.snapshots[1];
    assert_eq!(
        e.offset,
        img.snapshots[0].offset + img.snapshots[0].entry_len
    );
    assert_eq!(e.entry_len, align8(40 + 24 + 1 + 2));
}

#[test]
fn apply_and_delete_diffs() {
    let d = TmpDir::new("apply");
    let p = image_with_snapshots(&d, "a.qcow2", &[]);
    let mut sh = shadow(&p);
    qemu_img(&["snapshot", "-a", "s1", &d.s("a.qcow2")]);
    let ch = sh.refresh(&mut std::fs::File::open(&p).unwrap()).unwrap();
    assert!(
        ch.iter()
            .all(|c| c.field != "nb_snapshots" && !c.field.starts_with("snapshot_")),
        "{ch:?}"
    );
    qemu_img(&["snapshot", "-d", "s1", &d.s("a.qcow2")]);
    let ch = sh.refresh(&mut std::fs::File::open(&p).unwrap()).unwrap();
    let text: Vec<String> = ch.iter().map(ToString::to_string).collect();
    assert!(
        text.contains(&"nb_snapshots: 2 → 1".to_string()),
        "{text:?}"
    );
    assert!(
        text.contains(&"snapshot_removed: s1".to_string()),
        "{text:?}"
    );
    assert!(ch.iter().any(|c| c.field == "snapshots_offset"));
    qemu_img(&["snapshot", "-d", "s2", &d.s("a.qcow2")]);
    let ch = sh.refresh(&mut std::fs::File::open(&p).unwrap()).unwrap();
    let text: Vec<String> = ch.iter().map(ToString::to_string).collect();
    assert!(
        text.contains(&"nb_snapshots: 1 → 0".to_string()),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|t| t.starts_with("snapshots_offset: 0x") && t.ends_with("→ 0x0")),
        "{text:?}"
    );
    assert_eq!(
        ch.iter()
            .find(|c| c.field == "snapshot_removed")
            .unwrap()
            .before,
        "s2"
    );
}

#[test]
fn zeroed_nb_snapshots_patch_equals_reread() {
    let d = TmpDir::new("zero");
    let p = image_with_snapshots(&d, "a.qcow2", &[]);
    let mut sh = shadow(&p);
    let mut w = sh.raw[60..72].to_vec();
    w[..4].fill(0);
    let patch = sh.apply_header_write(60, &w).expect("header write");
    assert!(patch.error.is_none());
    patch_file_and_compare(&mut sh, &p, &w, patch);
}

fn patch_file_and_compare(sh: &mut Qcow2Shadow, p: &std::path::Path, w: &[u8], hp: HeaderPatch) {
    patch(p, 60, w);
    let mut reread = sh.refresh(&mut std::fs::File::open(p).unwrap()).unwrap();
    let mut fromp = hp.changes.clone();
    reread.sort();
    fromp.sort();
    assert_eq!(reread, fromp);
    let text: Vec<String> = reread.iter().map(ToString::to_string).collect();
    assert!(
        text.contains(&"nb_snapshots: 2 → 0".to_string()),
        "{text:?}"
    );
    assert_eq!(
        reread
            .iter()
            .filter(|c| c.field == "snapshot_removed")
            .count(),
        2
    );
}

#[test]
fn absorb_keeps_shadow_consistent() {
    let d = TmpDir::new("absorb");
    let p = image_with_snapshots(&d, "a.qcow2", &[]);
    let mut sh = shadow(&p);
    let p1 = sh.apply_header_write(60, &1u32.to_be_bytes()).unwrap();
    assert!(sh.absorb(p1));
    assert_eq!(sh.image.snapshots.len(), 1);
    let p2 = sh.apply_header_write(0, b"\x00\x01\x02\x03").unwrap();
    assert!(p2.error.is_some());
    assert_eq!(
        p2.changes[0].to_string(),
        "magic: QFI\\xfb → \\x00\\x01\\x02\\x03"
    );
    assert!(!sh.absorb(p2));
    assert!(sh.apply_header_write(1 << 20, b"x").is_none());
}

#[test]
fn with_write_overlays_the_captured_bytes_on_every_read_path() {
    let file: Vec<u8> = (0u8..32).collect();
    let mut r = WithWrite::new(std::io::Cursor::new(file), 6, b"ABCD");
    let mut all = Vec::new();
    r.read_to_end(&mut all).unwrap();
    assert_eq!(&all[4..12], b"\x04\x05ABCD\x0a\x0b");
    // Reads that start inside, end inside, or miss the write.
    let mut b = [0u8; 3];
    r.seek(SeekFrom::Start(8)).unwrap();
    r.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"CD\x0a");
    r.seek(SeekFrom::Start(4)).unwrap();
    r.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"\x04\x05A");
    r.seek(SeekFrom::Start(20)).unwrap();
    r.read_exact(&mut b).unwrap();
    assert_eq!(&b, &[20, 21, 22]);
    assert_eq!(r.seek(SeekFrom::End(0)).unwrap(), 32);
}

#[test]
fn rebase_changes_backing_file() {
    let d = TmpDir::new("rebase");
    qemu_img(&["create", "-q", "-f", "qcow2", &d.s("base.qcow2"), "64M"]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        &d.s("top.qcow2"),
    ]);
    let top = d.path("top.qcow2");
    let img = load(&top);
    check_against_info(&img, &info(&top));
    assert_eq!(img.backing_format(), Some("qcow2"));
    assert_eq!(
        labels(&img.classify(img.header.backing_file_offset, 4)),
        ["backing_name"]
    );
    let mut sh = shadow(&top);
    qemu_img(&[
        "rebase",
        "-u",
        "-b",
        "/tmp/evil.qcow2",
        "-F",
        "qcow2",
        &d.s("top.qcow2"),
    ]);
    let ch = sh.refresh(&mut std::fs::File::open(&top).unwrap()).unwrap();
    let text: Vec<String> = ch.iter().map(ToString::to_string).collect();
    assert!(
        text.contains(&"backing_file: base.qcow2 → /tmp/evil.qcow2".to_string()),
        "{text:?}"
    );
    check_against_info(&sh.image, &info(&top));
}

#[test]
fn commit_amend_bitmap_resize() {
    let d = TmpDir::new("ops");
    qemu_img(&["create", "-q", "-f", "qcow2", &d.s("base.qcow2"), "64M"]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        &d.s("top.qcow2"),
    ]);
    qemu_io(&d.s("top.qcow2"), "write -P 0x11 0 64k");
    qemu_img(&["commit", "-q", &d.s("top.qcow2")]);
    for n in ["base.qcow2", "top.qcow2"] {
        check_against_info(&load(&d.path(n)), &info(&d.path(n)));
    }
    let base = d.path("base.qcow2");
    let mut sh = shadow(&base);
    qemu_img(&["amend", "-o", "lazy_refcounts=on", &d.s("base.qcow2")]);
    let ch = sh
        .refresh(&mut std::fs::File::open(&base).unwrap())
        .unwrap();
    assert!(
        ch.iter()
            .any(|c| c.to_string() == "compatible_features: 0x0 → 0x1"),
        "{ch:?}"
    );

    qemu_img(&["bitmap", "--add", &d.s("base.qcow2"), "bm0"]);
    let ch = sh
        .refresh(&mut std::fs::File::open(&base).unwrap())
        .unwrap();
    assert!(
        ch.iter().any(|c| c.to_string() == "bitmap_added: bm0"),
        "{ch:?}"
    );
    assert!(
        ch.iter()
            .any(|c| c.to_string() == "autoclear_features: 0x0 → 0x1"),
        "{ch:?}"
    );
    let img = &sh.image;
    let inf = info(&base);
    let names: Vec<&str> = inf["format-specific"]["data"]["bitmaps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bm0"]);
    assert_eq!(img.bitmaps[0].name, "bm0");
    let Some(ExtensionData::Bitmaps {
        bitmap_directory_offset: o,
        ..
    }) = img.extension(EXT_BITMAPS).map(|e| &e.data)
    else {
        panic!("no bitmaps extension");
    };
    assert_eq!(labels(&img.classify(*o, 8)), ["bitmap"]);

    qemu_img(&["resize", "-q", &d.s("base.qcow2"), "128M"]);
    let ch = sh
        .refresh(&mut std::fs::File::open(&base).unwrap())
        .unwrap();
    assert!(
        ch.iter()
            .any(|c| c.to_string() == "size: 67108864 → 134217728"),
        "{ch:?}"
    );
    check_against_info(&sh.image, &info(&base));
}

#[test]
fn classify_metadata_regions() {
    let d = TmpDir::new("classify");
    let p = image_with_snapshots(&d, "a.qcow2", &[]);
    let img = load(&p);
    let h = &img.header;
    let cs = img.cluster_size();
    assert_eq!(labels(&img.classify(h.l1_table_offset, 8)), ["l1.active"]);
    assert_eq!(
        labels(&img.classify(h.snapshots_offset, 40)),
        ["snapshot_table"]
    );
    let s1 = &img.snapshots[0];
    let sp = img.classify(s1.l1_table_offset, 8);
    assert_eq!(sp[0].region, Region::L1Snapshot("s1".into()));
    assert_eq!(sp[0].region.as_label(), "l1.snapshot");
    assert_eq!(
        labels(&img.classify(h.refcount_table_offset, 8)),
        ["refcount"]
    );
    let rb = img.refcount_blocks()[0];
    assert_eq!(labels(&img.classify(rb + 100, 2)), ["refcount"]);
    let l2 = img.l2_tables();
    assert!(!l2.is_empty());
    assert_eq!(labels(&img.classify(l2[0], 8)), ["l2"]);
    assert_eq!(
        labels(&img.classify(img.file_len + 100 * cs, 4096)),
        ["data"]
    );
    // Guest data cluster for offset 0: first L2 entry of the active L1.
    let mut f = std::fs::File::open(&p).unwrap();
    let l2e = Src::new(&mut f)
        .unwrap()
        .read_exact(img.l1[0] & L1_OFFSET_MASK, 8, "l2")
        .unwrap();
    let data = be_u64_padded(&l2e, 0) & L1_OFFSET_MASK;
    assert_eq!(labels(&img.classify(data, cs)), ["data"]);

    // One write across header, cluster 0 padding and the next clusters.
    let spans = img.classify(0, 4 * cs);
    assert_eq!(spans[0].region, Region::Header("magic"));
    assert!(spans
        .windows(2)
        .all(|w| w[0].end == w[1].start && w[0].region != w[1].region));
    assert_eq!((spans[0].start, spans.last().unwrap().end), (0, 4 * cs));
    let l = labels(&spans);
    let pos = |x: &str| {
        l.iter()
            .position(|y| y == x)
            .unwrap_or_else(|| panic!("{x} missing in {l:?}"))
    };
    assert!(pos("header.nb_snapshots") < pos("header.padding"));
    assert!(pos("header.padding") < pos("refcount"));
    assert_eq!(
        spans
            .iter()
            .find(|s| s.region == Region::Header("padding"))
            .unwrap()
            .end,
        cs
    );
}

fn damaged(base: &[u8], off: usize, bytes: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    v[off..off + bytes.len()].copy_from_slice(bytes);
    v
}

#[test]
fn hostile_inputs_give_typed_errors() {
    let d = TmpDir::new("hostile");
    let p = small_seed_image(&d);
    let good = std::fs::read(&p).unwrap();
    let img = Qcow2Image::from_bytes(&good).unwrap();
    for n in [0, 3, 50, 71, 100, 111] {
        assert!(
            matches!(
                Qcow2Image::from_bytes(&good[..n]),
                Err(Qcow2Error::Truncated { .. })
            ),
            "len {n}"
        );
    }
    let so = img.header.snapshots_offset as usize;
    assert!(matches!(
        Qcow2Image::from_bytes(&good[..so + 20]),
        Err(Qcow2Error::Truncated { .. })
    ));
    let huge_l1 = damaged(&good, 36, &u32::MAX.to_be_bytes());
    assert!(matches!(
        Qcow2Image::from_bytes(&huge_l1),
        Err(Qcow2Error::TooLarge {
            what: "l1_size",
            ..
        })
    ));
    let beyond = damaged(&good, 64, &(1u64 << 40).to_be_bytes());
    assert!(matches!(
        Qcow2Image::from_bytes(&beyond),
        Err(Qcow2Error::Truncated { .. })
    ));
    let nb = damaged(&good, 60, &65535u32.to_be_bytes());
    assert!(Qcow2Image::from_bytes(&nb).is_err());
    let bfs = damaged(&good, 16, &5000u32.to_be_bytes());
    assert!(matches!(
        Qcow2Image::from_bytes(&bfs),
        Err(Qcow2Error::TooLarge {
            what: "backing_file_size",
            ..
        })
    ));
    // Extension length running past cluster 0.
    let ext = damaged(&good, 116, &0xffff_fff0u32.to_be_bytes());
    assert!(matches!(
        Qcow2Image::from_bytes(&ext),
        Err(Qcow2Error::Invalid { .. })
    ));
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let random: Vec<u8> = (0..8192).map(|_| rng.next() as u8).collect();
    assert!(matches!(
        Qcow2Image::from_bytes(&random),
        Err(Qcow2Error::BadMagic)
    ));
    assert!(matches!(
        parse_header(&damaged(&good, 4, &[0, 0, 0, 9])),
        Err(Qcow2Error::UnsupportedVersion(9))
    ));
    // Snapshot table pointing at the header itself: parses garbage or
    // errors, but terminates.
    let selfref = damaged(&good, 64, &0u64.to_be_bytes());
    let t = Instant::now();
    let _ = Qcow2Image::from_bytes(&selfref);
    // Everything pointing at cluster 0: still bounded.
    let mut all0 = good.clone();
    for o in [40, 48, 64] {
        all0[o..o + 8].fill(0);
    }
    if let Ok(i) = Qcow2Image::from_bytes(&all0) {
        let _ = i.classify(0, 1 << 20);
    }
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn mutation_fuzz_no_panic_bounded_time() {
    let d = TmpDir::new("fuzz");
    let p = small_seed_image(&d);
    let full = std::fs::read(&p).unwrap();
    assert!(full.len() <= 64 << 10, "seed image grew to {}", full.len());
    let seed = &full[..];
    let sh = Qcow2Shadow::load(&mut std::io::Cursor::new(seed)).unwrap();
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let start = Instant::now();
    let mut parsed = 0;
    for i in 0..2000 {
        let mut v = seed.to_vec();
        for _ in 0..=rng.below(8) {
            // Mostly the header, sometimes anywhere.
            let span = if rng.below(4) == 0 {
                v.len() as u64
            } else {
                128
            };
            let i = rng.below(span) as usize;
            v[i] = match rng.below(4) {
                0 => 0,
                1 => 0xff,
                _ => rng.next() as u8,
            };
        }
        if rng.below(8) == 0 {
            v.truncate(rng.below(v.len() as u64) as usize);
        }
        if let Ok(img) = Qcow2Image::from_bytes(&v) {
            parsed += 1;
            let off = rng.below(1 << 20);
            let _ = img.classify(off, rng.below(1 << 18));
            let _ = diff_images(&sh.image, &img);
        }
        let off = rng.below(256);
        let _ = sh.apply_header_write(off, &v[..v.len().min(256)]);
        if i % 20 == 0 {
            // The file-based inspector must survive the same input.
            std::fs::write(d.path("m.qcow2"), &v).unwrap();
            let _ = crate::inspect::inspect_image(&d.path("m.qcow2")).to_string();
        }
    }
    assert!(parsed > 0, "no mutant parsed: mutations too coarse");
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn entropy_and_escaping() {
    assert_eq!(shannon_entropy(&[0; 4096]), 0.0);
    let all: Vec<u8> = (0..=255).collect();
    assert!((shannon_entropy(&all) - 8.0).abs() < 1e-9);
    let mut rng = XorShift(7);
    let rnd: Vec<u8> = (0..65536).map(|_| rng.next() as u8).collect();
    assert!(shannon_entropy(&rnd) > 7.9);
    assert!(shannon_entropy(&QCOW2_MAGIC.to_be_bytes()) <= 2.0);
    assert_eq!(escape_bytes(b"QFI\xfb a\\\n"), "QFI\\xfb a\\x5c\\x0a");
    assert_eq!(BackingName(b"b\xffx".to_vec()).to_string(), "b\\xffx");
}

#[test]
fn header_fields_table_matches_decoder() {
    // Each field's byte range must be what decode_lossy reads for it.
    let mut b = [0u8; 112];
    b[4..8].copy_from_slice(&3u32.to_be_bytes());
    b[100..104].copy_from_slice(&112u32.to_be_bytes());
    let base = Qcow2Header::decode_lossy(&b).field_values();
    for (i, &(name, s, l)) in HEADER_FIELDS.iter().enumerate() {
        let mut m = b;
        m[(s + l - 1) as usize] ^= 0x01;
        let vals = Qcow2Header::decode_lossy(&m).field_values();
        assert_eq!(vals[i].0, name);
        let changed: Vec<_> = vals
            .iter()
            .zip(&base)
            .filter(|(a, b)| a != b)
            .map(|(a, _)| a.0)
            .collect();
        // Changing the version turns the v3 fields into v2 defaults.
        assert_eq!(changed[0], name);
        assert!(name == "version" || changed.len() == 1, "{changed:?}");
    }
}
