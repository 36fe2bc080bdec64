//! Watches beyond the stores' own paths: overlays mounted over a store (the mount table,
//! rescanned as it changes) and loop devices already attached to watched images.

use tokio::io::unix::AsyncFd;

use super::kernel_maps::KernelMaps;
use crate::{kernel::loader::Kernel, pipeline::Pipeline};

/// The agent's mount table, polled for changes (`POLLPRI`); None when it cannot be, said once.
pub(super) fn mount_table_watch() -> Option<AsyncFd<std::os::fd::OwnedFd>> {
    let f = std::fs::File::open(crate::overlay::MOUNTINFO).and_then(|f| {
        // SAFETY: an OwnedFd moved into the AsyncFd, which closes it only on drop.
        unsafe {
            AsyncFd::register_with_interest(
                std::os::fd::OwnedFd::from(f),
                tokio::io::Interest::PRIORITY,
            )
        }
        .map_err(std::io::Error::from)
    });
    match f {
        Ok(f) => Some(f),
        Err(e) => {
            eprintln!(
                "snapmon: {}: {e}: overlays mounted over a store after the start are not watched",
                crate::overlay::MOUNTINFO
            );
            None
        }
    }
}

/// The mount table changed (a mount or unmount in the agent's mount namespace).
pub(super) async fn mount_table_changed(w: &Option<AsyncFd<std::os::fd::OwnedFd>>) {
    let Some(w) = w else {
        return std::future::pending().await;
    };
    match w.ready(tokio::io::Interest::PRIORITY).await {
        // The kernel re-arms on the next change: poll itself took note of this one.
        Ok(mut g) => g.clear_ready(),
        Err(_) => std::future::pending().await,
    }
}

/// Re-read the mount table and bring the overlay aliases in line; what changed is said on
/// stderr (the records carry `snapmon.detail.overlay_*` on each event through a view).
pub(super) fn rescan_overlays(pipe: &mut Pipeline, k: &mut Kernel) {
    let text = match std::fs::read_to_string(crate::overlay::MOUNTINFO) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("snapmon: {}: {e}", crate::overlay::MOUNTINFO);
            return;
        }
    };
    let r = pipe.enricher.rescan_overlays(&text, &mut KernelMaps::of(k));
    pipe.classifier.preload(r.found.iter().map(|(k, p)| (k, p)));
    // One line, not one per file: a store can hold many files the watch set never named.
    if let Some((_, first)) = r.found.first() {
        eprintln!(
            "snapmon: {} file(s) made through an overlay's merged view before its mount was seen (first {}): watched from now",
            r.found.len(),
            first.display()
        );
    }
    for (mp, upper, n) in &r.added {
        eprintln!(
            "snapmon: overlay at {} has {} as its upper dir: {n} merged-view aliases watched",
            mp.display(),
            upper.display()
        );
    }
    for mp in &r.removed {
        eprintln!(
            "snapmon: overlay at {} unmounted: its aliases withdrawn",
            mp.display()
        );
    }
    if r.refused > 0 {
        eprintln!(
            "snapmon: {} merged-view aliases of images refused by the watched-files map: writes through them go unseen",
            r.refused
        );
    }
}

/// Watch the loop devices already over watched images (`/sys/block/loop*/loop`) as their
/// attach would have; each one seeded is said on stderr.
pub(super) fn seed_loops(pipe: &mut Pipeline, k: &mut Kernel) {
    let seeded = pipe.enricher.seed_loops(
        std::path::Path::new(crate::enrich::SYS_BLOCK),
        &mut KernelMaps::of(k),
    );
    for s in seeded {
        eprintln!("snapmon: {s}");
    }
}
