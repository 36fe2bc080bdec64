//! In-kernel write filter: the byte ranges of a classified file that trusted writers'
//! writes must still be reported for, fitted into the kernel's fixed-size map value.
//!
//! Everything outside the ranges (guest data clusters, LV data) written by a trusted writer
//! of the format never reaches userspace. Fitting only ever widens ranges, so a file with
//! more metadata extents than slots reports more, never less.

use snapmon_common::{ByteRange, WriteFilter, FILTER_RANGES};

/// Sort, merge overlapping and touching ranges, then merge across the smallest gaps until
/// at most `max` remain. Empty ranges are dropped; the result covers every input byte.
pub fn fit(mut v: Vec<(u64, u64)>, max: usize) -> Vec<(u64, u64)> {
    v.retain(|(s, e)| s < e);
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    let max = max.max(1);
    while out.len() > max {
        // Merge the neighbours with the smallest gap: the least data that starts being reported.
        let i = (0..out.len() - 1)
            .min_by_key(|&i| out[i + 1].0 - out[i].1)
            .unwrap_or(0);
        out[i].1 = out[i].1.max(out[i + 1].1);
        out.remove(i + 1);
    }
    out
}

/// The kernel map value for `actors` (`filter_actor` bits) and these ranges.
pub fn to_wire(actors: u32, ranges: Vec<(u64, u64)>) -> WriteFilter {
    let ranges = fit(ranges, FILTER_RANGES);
    let mut f = WriteFilter {
        actors,
        count: ranges.len() as u32,
        ..Default::default()
    };
    for (slot, (s, e)) in f.ranges.iter_mut().zip(ranges) {
        *slot = ByteRange { start: s, end: e };
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_overlapping_and_touching_ranges_in_order() {
        let v = fit(vec![(100, 200), (0, 10), (10, 20), (150, 300), (5, 5)], 16);
        assert_eq!(v, vec![(0, 20), (100, 300)]);
    }

    #[test]
    fn too_many_ranges_merge_across_the_smallest_gaps_and_still_cover_everything() {
        let input: Vec<(u64, u64)> = (0..40).map(|i| (i * 1000, i * 1000 + 10 + i)).collect();
        let v = fit(input.clone(), 16);
        assert_eq!(v.len(), 16);
        for (s, e) in input {
            assert!(v.iter().any(|(a, b)| *a <= s && e <= *b), "{s}..{e} lost");
        }
        // Gaps shrink with i, so the widest gaps (the first ones) survive.
        assert_eq!(v[0], (0, 10));
    }

    #[test]
    fn wire_value_holds_the_fitted_ranges() {
        let f = to_wire(3, vec![(0, 65536), (196608, 262144)]);
        assert_eq!(f.actors, 3);
        assert_eq!(f.count, 2);
        assert_eq!(
            f.ranges[1],
            ByteRange {
                start: 196608,
                end: 262144
            }
        );
        assert_eq!(f.ranges[2], ByteRange::default());
    }

    #[test]
    fn filter_ranges_cover_every_table_but_not_l2_refblocks_or_data() {
        use crate::classify::qcow2::testutil::{load, qemu_img, TmpDir};
        let d = TmpDir::new("ranges");
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
        qemu_img(&["snapshot", "-c", "s1", &p]);
        let img = load(&d.path("a.qcow2"));
        let r = fit(img.metadata_ranges(), FILTER_RANGES);
        let covered = |o: u64| r.iter().any(|(s, e)| *s <= o && o < *e);
        let h = &img.header;
        let cs = img.cluster_size();
        for o in [
            0,
            60,
            112,
            cs - 1,
            h.l1_table_offset,
            h.refcount_table_offset,
            h.snapshots_offset,
        ] {
            assert!(covered(o), "{o} not covered by {r:?}");
        }
        assert!(covered(img.snapshots[0].l1_table_offset));
        let l2 = img.l2_tables();
        assert!(
            !l2.is_empty() && l2.iter().all(|&o| !covered(o)),
            "{l2:?} in {r:?}"
        );
        assert!(img.refcount_blocks().iter().all(|&o| !covered(o)));
        let mut f = std::fs::File::open(d.path("a.qcow2")).unwrap();
        let data = img.allocated_data_clusters(&mut f, 64);
        assert!(data.len() > 16 && data.iter().all(|&o| !covered(o)));
    }
}
