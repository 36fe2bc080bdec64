//! VM-host syscall mix: what each hook design costs a process that does what a QEMU host
//! does between writes (ppoll on event notifiers, eventfd reads and writes, ioctls,
//! io_uring_enter) and not only writes. A raw `sys_enter` hook runs on all of those, the
//! per-syscall tracepoints only on the writes, so this phase decides which design wins.

use std::os::{fd::AsRawFd as _, unix::fs::FileExt as _};

use anyhow::{bail, Context as _};
use serde::Serialize;

use super::{
    agent, fio,
    hook::{self, HookRun},
};

pub const CONFIGS: &[&str] = &["none", "floor", "floor-raw", "snapmon", "snapmon-raw"];
/// The one "target" of the mix runs (they share `HookRun` with the hook phase).
pub const TARGETS: &[&str] = &["mix"];

/// One iteration of the mix: (syscall, calls per iteration). Assumed, not traced: a KVM
/// vCPU thread's dominant syscall is `ioctl(KVM_RUN)` (stood in for by FIONREAD on a pipe);
/// QEMU's main loop and IO threads wake in `ppoll` on event notifiers, clear them with an
/// eventfd `read`, kick each other with an eventfd `write` and wake with `futex`; virtio-blk with
/// `aio=io_uring` submits through `io_uring_enter`; `aio=threads` writes with `pwrite`, here
/// one 4 KiB write to the watched image (data clusters, QEMU trusted) and one to an
/// unwatched file per iteration.
pub const MIX: &[(&str, u32)] = &[
    ("ioctl(FIONREAD) on a pipe", 4),
    ("ppoll(eventfd + pipe, 0 timeout)", 3),
    ("futex(FUTEX_WAKE_PRIVATE), no waiter", 2),
    ("io_uring_enter (one NOP, wait for it)", 2),
    ("write(eventfd, 8 bytes)", 1),
    ("read(eventfd, 8 bytes)", 1),
    ("pwrite 4 KiB, unwatched file", 1),
    ("pwrite 4 KiB, watched qcow2 (data cluster)", 1),
];

/// Syscalls per iteration.
pub fn syscalls_per_iter() -> u32 {
    MIX.iter().map(|m| m.1).sum()
}

/// What each config is, for the report.
pub const LEGEND: &[(&str, &str)] = &[
    ("none", "no agent, no BPF program"),
    (
        "floor",
        "a do-nothing program on the write syscalls' tracepoints snapmon uses",
    ),
    (
        "floor-raw",
        "the same program on raw `sys_enter` (runs on every syscall of the mix)",
    ),
    (
        "snapmon",
        "the agent as in the hook-cost phase (tracepoint mode, per-syscall tracepoints)",
    ),
    ("snapmon-raw", "the agent with `--syscall-hook raw`"),
];

fn check(r: libc::c_long, what: &str) -> anyhow::Result<libc::c_long> {
    if r < 0 {
        bail!("{what}: {}", std::io::Error::last_os_error());
    }
    Ok(r)
}

/// One mix process (`xtask bench --mixloop UNWATCHED WATCHED N`): N/4 warm-up iterations,
/// then N timed ones; prints thread CPU ns per iteration.
pub fn worker(args: &[String]) -> anyhow::Result<()> {
    let [unwatched, watched, n] = args else {
        bail!("--mixloop UNWATCHED WATCHED N");
    };
    let n: u64 = n.parse().context("N")?;
    let open = |p: &str| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .with_context(|| format!("opening {p}"))
    };
    let (plain, image) = (open(unwatched)?, open(watched)?);
    // SAFETY: plain syscalls on fds this function owns; every result is checked.
    let efd = check(
        unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) }.into(),
        "eventfd",
    )? as i32;
    let mut pipe = [0i32; 2];
    check(
        unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) }.into(),
        "pipe2",
    )?;
    let mut ring = io_uring::IoUring::new(8).context("io_uring_setup")?;
    let buf = [0xa5u8; 4096];
    let futex = 0u32;
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let ns = hook::time_calls(n, |i| {
        let io = |r: libc::c_long| {
            if r < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(r)
            }
        };
        let one = 1u64;
        // SAFETY: valid fds and buffers of the sizes passed.
        unsafe {
            for _ in 0..4 {
                let mut avail: libc::c_int = 0;
                io(libc::ioctl(pipe[0], libc::FIONREAD, &mut avail).into())?;
            }
            io(libc::write(efd, (&one as *const u64).cast(), 8) as libc::c_long)?;
            for _ in 0..3 {
                let mut fds = [
                    libc::pollfd {
                        fd: efd,
                        events: libc::POLLIN,
                        revents: 0,
                    },
                    libc::pollfd {
                        fd: pipe[0],
                        events: libc::POLLIN,
                        revents: 0,
                    },
                ];
                io(libc::ppoll(fds.as_mut_ptr(), 2, &zero, std::ptr::null()).into())?;
            }
            let mut v = 0u64;
            io(libc::read(efd, (&mut v as *mut u64).cast(), 8) as libc::c_long)?;
            // QEMU's mutexes and events wake each other; nobody waits here, so it returns 0.
            for _ in 0..2 {
                io(libc::syscall(
                    libc::SYS_futex,
                    &futex as *const u32,
                    libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                    1,
                ))?;
            }
        }
        for _ in 0..2 {
            let nop = io_uring::opcode::Nop::new().build();
            // SAFETY: a NOP references no memory.
            unsafe { ring.submission().push(&nop) }
                .map_err(|_| std::io::Error::other("io_uring submission queue full"))?;
            ring.submit_and_wait(1)?;
            ring.completion().for_each(drop);
        }
        let off = fio::OFFSET + (i * 4096) % fio::SIZE;
        plain.write_all_at(&buf, off)?;
        image.write_all_at(&buf, off)
    })?;
    // Keep the fds open through the timed loop (closing is not part of the mix).
    let _ = (efd, pipe, ring.as_raw_fd());
    println!("{ns:.2}");
    Ok(())
}

fn run_mix(s: &hook::Setup, n: u64) -> anyhow::Result<f64> {
    let mut cmd = std::process::Command::new(s.loopgen);
    cmd.args(["bench", "--mixloop"])
        .arg(s.unwatched)
        .arg(s.watched)
        .arg(n.to_string());
    hook::ns_from(cmd, "syscall-mix loop")
}

/// Each repetition runs every config once, in turn.
pub fn phase(
    s: &hook::Setup,
    reps: usize,
    iters: u64,
    runs: &mut Vec<HookRun>,
) -> anyhow::Result<()> {
    let raw = agent::raw_hook_support(s.bin);
    for rep in 1..=reps {
        for &config in CONFIGS {
            let hook::Armed {
                _floor,
                agent: ag,
                skip,
            } = hook::arm(s, config, &raw, "mix")?;
            let r = match &skip {
                Some(e) => Err(anyhow::anyhow!("{e}")),
                None => run_mix(s, iters),
            };
            if let Ok(ns) = &r {
                // The loop's writes are trusted: a stream of events here would mean the
                // policy did not take, and the agent's cost is not the one meant.
                let events = ag
                    .as_ref()
                    .and_then(|g: &agent::Agent| agent::count(&g.out, 0).ok())
                    .map(|c| format!(", agent wrote {} events", c.events))
                    .unwrap_or_default();
                println!("bench: mix rep {rep}/{reps} {config:<11} {ns:>9.1} ns/iteration{events}");
            }
            runs.push(HookRun {
                rep,
                config,
                target: "mix",
                ns_per_write: r.as_ref().ok().copied(),
                error: r.err().map(|e| format!("{e:#}")),
            });
            if let Some(mut g) = ag {
                if !g.alive() {
                    bail!("the agent ({config}) died in the syscall-mix phase");
                }
                g.stop()?;
            }
        }
    }
    Ok(())
}

/// Which syscall-hook mode costs the mix less.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    /// Median over repetitions of (snapmon-raw − snapmon) in the same repetition is below 0.
    RawWins {
        by_ns: f64,
        faster_reps: usize,
        reps: usize,
    },
    TracepointWins {
        by_ns: f64,
        faster_reps: usize,
        reps: usize,
    },
    /// Fewer than 5 paired repetitions, or the faster mode won fewer than 3 in 4 of them:
    /// on a shared host that is within the noise (a sign test at 8 of 10 is p ≈ 0.055).
    NoClearWinner {
        raw_minus_tracepoint_ns: f64,
        raw_faster_reps: usize,
        reps: usize,
    },
    /// The build has no raw mode (or its runs failed).
    RawNotMeasured,
    TracepointNotMeasured,
}

/// Paired per repetition, so drift on the shared host cancels; `faster_reps` counts the
/// repetitions in which the winner was the faster one.
pub fn verdict(runs: &[HookRun]) -> Verdict {
    let ns = |c: &str, rep: usize| {
        runs.iter()
            .find(|r| r.target == "mix" && r.config == c && r.rep == rep)
            .and_then(|r| r.ns_per_write)
    };
    let has = |c: &str| {
        runs.iter()
            .any(|r| r.config == c && r.ns_per_write.is_some())
    };
    if !has("snapmon") {
        return Verdict::TracepointNotMeasured;
    }
    let d: Vec<f64> = runs
        .iter()
        .filter(|r| r.target == "mix" && r.config == "snapmon-raw")
        .filter_map(|r| Some(r.ns_per_write? - ns("snapmon", r.rep)?))
        .collect();
    let reps = d.len();
    let Some(m) = super::report::median(d.clone()) else {
        return Verdict::RawNotMeasured;
    };
    let raw_faster = d.iter().filter(|x| **x < 0.0).count();
    let winner_reps = if m < 0.0 {
        raw_faster
    } else {
        reps - raw_faster
    };
    if reps < 5 || winner_reps * 4 < reps * 3 {
        return Verdict::NoClearWinner {
            raw_minus_tracepoint_ns: m,
            raw_faster_reps: raw_faster,
            reps,
        };
    }
    if m < 0.0 {
        Verdict::RawWins {
            by_ns: -m,
            faster_reps: d.iter().filter(|x| **x < 0.0).count(),
            reps,
        }
    } else {
        Verdict::TracepointWins {
            by_ns: m,
            faster_reps: d.iter().filter(|x| **x > 0.0).count(),
            reps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rep: usize, config: &'static str, ns: Option<f64>) -> HookRun {
        HookRun {
            rep,
            config,
            target: "mix",
            ns_per_write: ns,
            error: ns.is_none().then(|| "not available in this build".into()),
        }
    }

    /// Pairs (snapmon, snapmon-raw) per repetition; `slow` repetitions run 4 µs slower
    /// for both, as when the shared host is busy.
    fn pairs(d: &[f64], slow: &[usize]) -> Vec<HookRun> {
        let mut v = Vec::new();
        for (i, d) in d.iter().enumerate() {
            let base = if slow.contains(&i) { 9000.0 } else { 5000.0 };
            v.push(run(i + 1, "snapmon", Some(base)));
            v.push(run(i + 1, "snapmon-raw", Some(base + d)));
        }
        v
    }

    #[test]
    fn raw_wins_only_when_it_costs_less_in_the_same_repetition() {
        // Raw is 100 ns cheaper in 8 of 10 repetitions; the slow repetitions would skew
        // unpaired medians, paired they cancel.
        let d = [
            -100.0, -100.0, -90.0, -120.0, -100.0, 50.0, -100.0, -110.0, 60.0, -100.0,
        ];
        assert_eq!(
            verdict(&pairs(&d, &[0, 5])),
            Verdict::RawWins {
                by_ns: 100.0,
                faster_reps: 8,
                reps: 10
            }
        );
        let d: Vec<f64> = d.iter().map(|x| -x).collect();
        assert_eq!(
            verdict(&pairs(&d, &[3])),
            Verdict::TracepointWins {
                by_ns: 100.0,
                faster_reps: 8,
                reps: 10
            }
        );
    }

    #[test]
    fn a_split_or_short_run_has_no_winner() {
        // 7 of 10 is within the noise of a shared host.
        let d = [
            -100.0, -100.0, -90.0, 120.0, -100.0, 50.0, -100.0, -110.0, 60.0, -100.0,
        ];
        assert_eq!(
            verdict(&pairs(&d, &[])),
            Verdict::NoClearWinner {
                raw_minus_tracepoint_ns: -100.0,
                raw_faster_reps: 7,
                reps: 10
            }
        );
        // Four repetitions that all agree are still too few to call it.
        assert!(matches!(
            verdict(&pairs(&[-100.0; 4], &[])),
            Verdict::NoClearWinner { reps: 4, .. }
        ));
    }

    #[test]
    fn absent_raw_mode_is_no_verdict() {
        let runs = vec![run(1, "snapmon", Some(5000.0)), run(1, "snapmon-raw", None)];
        assert_eq!(verdict(&runs), Verdict::RawNotMeasured);
        assert_eq!(
            verdict(&[run(1, "snapmon-raw", Some(1.0))]),
            Verdict::TracepointNotMeasured
        );
    }
}
