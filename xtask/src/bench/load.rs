//! Capacity and alert latency: rate-controlled writer processes doing what an attacker's
//! tool would (12-byte pwrite at offset 60 of a watched qcow2: nb_snapshots +
//! snapshots_offset), an inotify tailer that stamps when each output byte became visible,
//! and the matching of both by process and order.

use std::{
    fs::{File, OpenOptions},
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _};

use super::agent::{self, Agent, ProcSample};

fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// One writer process (`xtask bench --loadgen FILE RATE SECS OUT`): pwrite the image's own
/// 12 header bytes back at offset 60 at RATE/s (0: flat out) and dump the CLOCK_REALTIME of
/// each return to OUT. Rewriting the same bytes keeps the image valid and the classifier on
/// its steady path (header write, exact diff from the captured sample, no re-read).
pub fn worker(args: &[String]) -> anyhow::Result<()> {
    let [file, rate, secs, out] = args else {
        bail!("--loadgen FILE RATE SECS OUT");
    };
    let rate: u64 = rate.parse()?;
    let secs: f64 = secs.parse()?;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .with_context(|| format!("opening {file}"))?;
    let mut buf = [0u8; 12];
    f.read_exact_at(&mut buf, 60)?;
    let cap = if rate > 0 { rate as f64 * secs } else { 2e6 };
    let mut ts: Vec<u64> = Vec::with_capacity(cap as usize + 1024);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let step_ns = if rate > 0 { 1e9 / rate as f64 } else { 0.0 };
    let mut i: u64 = 0;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if rate > 0 {
            let due = start + Duration::from_nanos((i as f64 * step_ns) as u64);
            if due > now {
                std::thread::sleep(due - now);
                continue;
            }
        }
        f.write_at(&buf, 60)?;
        ts.push(realtime_ns());
        i += 1;
    }
    let bytes: Vec<u8> = ts.iter().flat_map(|t| t.to_le_bytes()).collect();
    std::fs::write(out, bytes).with_context(|| format!("writing {out}"))?;
    Ok(())
}

/// (output size, CLOCK_REALTIME when that size was first seen).
type Visible = Vec<(u64, u64)>;

/// Watch the output file with inotify (1 ms poll as a backstop) and record each size change:
/// a line is visible once the file is at least as long as the line's end.
fn tail(path: PathBuf, stop: Arc<AtomicBool>) -> anyhow::Result<Visible> {
    let f = File::open(&path)?;
    let ifd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    if ifd < 0 {
        bail!("inotify_init1: {}", std::io::Error::last_os_error());
    }
    let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    unsafe { libc::inotify_add_watch(ifd, cpath.as_ptr(), libc::IN_MODIFY) };
    let mut out: Visible = Vec::with_capacity(1 << 20);
    let mut last = u64::MAX;
    let mut evbuf = [0u8; 4096];
    let mut stopping = 0;
    loop {
        let mut pfd = libc::pollfd {
            fd: ifd,
            events: libc::POLLIN,
            revents: 0,
        };
        unsafe { libc::poll(&mut pfd, 1, 1) };
        while unsafe { libc::read(ifd, evbuf.as_mut_ptr().cast(), evbuf.len()) } > 0 {}
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let t = realtime_ns();
        if len != last {
            out.push((len, t));
            last = len;
        }
        if stop.load(Ordering::Relaxed) {
            stopping += 1;
            if stopping > 5 {
                break;
            }
        }
    }
    unsafe { libc::close(ifd) };
    Ok(out)
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    /// `alert` or `event`: which record the latency is measured to.
    pub to: &'static str,
    pub n: usize,
    /// Write returned → record line visible in the output file.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Kernel `@timestamp` (syscall entry) → line visible, as a cross-check.
    pub from_entry_p50_ms: f64,
    pub from_entry_p99_ms: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    pub target_rate: u64,
    pub writers: usize,
    pub secs: f64,
    pub writes: u64,
    pub achieved_rate: f64,
    /// Records of the writers' pids (events, or alerts when a rules engine emits them).
    pub delivered: u64,
    pub alerts: u64,
    pub lost_records: u64,
    pub lost_kernel: u64,
    pub lost_decoder: u64,
    /// Records the agent's output sink dropped (its queue full: the sink fell behind).
    pub lost_sink: u64,
    pub zero_loss: bool,
    pub agent_alive: bool,
    pub agent_cpu_s: f64,
    /// Agent CPU over the step and its drain, per 100 000 delivered records.
    pub cpu_s_per_100k: Option<f64>,
    pub agent_cpu_pct: f64,
    pub rss_kib_after: u64,
    pub hwm_kib_after: u64,
    pub drain_s: f64,
    pub bytes_per_record: f64,
    pub latency: Option<Latency>,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

/// RFC 3339 `YYYY-MM-DDTHH:MM:SS.fffffffffZ` → Unix ns (the agent's `@timestamp` form).
fn parse_ts(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    let frac = s.get(20..s.len() - 1).unwrap_or("");
    let mut nanos: i64 = frac.parse().unwrap_or(0);
    for _ in frac.len()..9 {
        nanos *= 10;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000_000 + nanos) as u64)
}

/// One capacity step against a running agent: `writers` processes, one image each.
pub fn step(
    agent: &mut Agent,
    images: &[PathBuf],
    rate: u64,
    secs: f64,
    work: &Path,
    exe: &Path,
) -> anyhow::Result<Step> {
    let from = agent.out_len();
    let before = agent.sample();
    let stop = Arc::new(AtomicBool::new(false));
    let tailer = {
        let (p, s) = (agent.out.clone(), stop.clone());
        std::thread::spawn(move || tail(p, s))
    };
    let per = if rate > 0 {
        (rate / images.len() as u64).max(1)
    } else {
        0
    };
    let mut kids: Vec<(Child, PathBuf)> = Vec::new();
    for (i, img) in images.iter().enumerate() {
        let out = work.join(format!("lg-{i}.bin"));
        let child = Command::new(exe)
            .args(["bench", "--loadgen"])
            .arg(img)
            .arg(per.to_string())
            .arg(secs.to_string())
            .arg(&out)
            .stdin(Stdio::null())
            .spawn()
            .context("spawning a load generator")?;
        kids.push((child, out));
    }
    let mut writes: Vec<(u32, Vec<u64>)> = Vec::new();
    for (mut c, out) in kids {
        let st = c.wait()?;
        if !st.success() {
            bail!("load generator failed: {st}");
        }
        let b = std::fs::read(&out)?;
        let ts = b
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        writes.push((c.id(), ts));
    }
    let load_end = Instant::now();
    agent.quiesce(Duration::from_millis(1500));
    let drain_s = load_end.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let visible = tailer.join().expect("tailer thread")?;
    let after = agent.sample();
    let alive = agent.alive();

    // Walk the step's output: per writer pid, its records in order.
    let text = agent::read_from(&agent.out, from)?;
    let pids: Vec<u32> = writes.iter().map(|w| w.0).collect();
    let mut per_pid_ev: Vec<Vec<(u64, Option<u64>)>> = vec![Vec::new(); pids.len()];
    let mut per_pid_al: Vec<Vec<(u64, Option<u64>)>> = vec![Vec::new(); pids.len()];
    let (mut lost_records, mut lost_kernel, mut lost_decoder, mut lost_sink) = (0, 0, 0, 0);
    let mut off = from;
    let mut lines = 0u64;
    for l in text.split_inclusive('\n') {
        off += l.len() as u64;
        if !l.ends_with('\n') {
            break;
        }
        lines += 1;
        // First size sample covering the line's end: when it became visible.
        let i = visible.partition_point(|&(len, _)| len < off);
        let vis = visible.get(i).map(|v| v.1);
        if l.contains("\"kind\":\"metric\"") {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(l) {
                if v["event"]["action"] == "lost" {
                    lost_records += 1;
                    let (k, d) = agent::lost_of(&v);
                    lost_kernel += k;
                    lost_decoder += d;
                    lost_sink += v["snapmon"]["metric"]["sinks"]
                        .as_object()
                        .map(|m| {
                            m.values()
                                .filter_map(|c| c.as_object())
                                .flat_map(|c| c.values().filter_map(|n| n.as_u64()))
                                .sum::<u64>()
                        })
                        .unwrap_or(0);
                }
            }
            continue;
        }
        let Ok(rec) = serde_json::from_str::<agent::Line>(l) else {
            continue;
        };
        let Some(k) = rec
            .process
            .and_then(|p| p.pid)
            .and_then(|p| pids.iter().position(|&x| x == p))
        else {
            continue;
        };
        // Only the writes: the writer's own open(O_RDWR) is a record too.
        if rec.event.action != "pwrite64" {
            continue;
        }
        let entry = rec.ts.and_then(parse_ts).unwrap_or(0);
        match rec.event.kind {
            "alert" => per_pid_al[k].push((entry, vis)),
            "event" => per_pid_ev[k].push((entry, vis)),
            _ => {}
        }
    }
    let n_writes: u64 = writes.iter().map(|w| w.1.len() as u64).sum();
    let n_alerts: u64 = per_pid_al.iter().map(|v| v.len() as u64).sum();
    // Latency to the alert only when every write raised one; rules dedupe repeats (one
    // alert per writer and file), and then the per-write record is the event.
    let use_alerts = n_alerts > 0 && n_alerts == n_writes;
    let recs = if use_alerts { &per_pid_al } else { &per_pid_ev };
    let delivered: u64 = recs.iter().map(|v| v.len() as u64).sum();
    let zero_loss = delivered == n_writes && lost_kernel == 0 && lost_decoder == 0;
    // Per writer, the k-th record is the k-th write: exact only when nothing was lost.
    let latency = zero_loss.then(|| {
        let (mut ret, mut ent) = (Vec::new(), Vec::new());
        for ((_, ts), rs) in writes.iter().zip(recs) {
            for (t, (entry, vis)) in ts.iter().zip(rs) {
                if let Some(v) = vis {
                    ret.push((*v as f64 - *t as f64) / 1e6);
                    if *entry > 0 {
                        ent.push((*v as f64 - *entry as f64) / 1e6);
                    }
                }
            }
        }
        Latency {
            to: if use_alerts { "alert" } else { "event" },
            n: ret.len(),
            p50_ms: pct(&mut ret, 50.0),
            p99_ms: pct(&mut ret, 99.0),
            max_ms: pct(&mut ret, 100.0),
            from_entry_p50_ms: pct(&mut ent, 50.0),
            from_entry_p99_ms: pct(&mut ent, 99.0),
        }
    });
    let cpu = after.cpu_s - before.cpu_s;
    let wall = secs + drain_s;
    Ok(Step {
        target_rate: rate,
        writers: images.len(),
        secs,
        writes: n_writes,
        achieved_rate: n_writes as f64 / secs,
        delivered,
        alerts: n_alerts,
        lost_records,
        lost_kernel,
        lost_decoder,
        lost_sink,
        zero_loss,
        agent_alive: alive,
        agent_cpu_s: cpu,
        cpu_s_per_100k: (delivered > 0).then(|| cpu / delivered as f64 * 1e5),
        agent_cpu_pct: cpu / wall * 100.0,
        rss_kib_after: after.rss_kib,
        hwm_kib_after: after.hwm_kib,
        drain_s,
        bytes_per_record: if lines > 0 {
            text.len() as f64 / lines as f64
        } else {
            0.0
        },
        latency,
    })
}

/// Idle footprint: CPU over `secs` with nothing happening, memory at the end.
pub fn idle(agent: &Agent, secs: f64) -> (ProcSample, f64) {
    let a = agent.sample();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let b = agent.sample();
    (b, (b.cpu_s - a.cpu_s) / secs * 100.0)
}
