//! Verifies the object's programs on several threads before the attach loop runs.
//!
//! Verification is most of a start (52 s of the loader's 66 s on a 6.1 guest) and each `BPF_PROG_LOAD` is
//! independent: the kernel takes no global lock for a privileged load. Loaded here, a program
//! is attached later in hook order; a refusal is reported there, as if it had just happened.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use aya::programs::{BtfTracePoint, FEntry, Lsm, Program, TracePoint};
use aya::{Btf as AyaBtf, Ebpf};

/// How one program is loaded: what the kernel checks it against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// A classic tracepoint program (syscalls/, raw_syscalls/).
    TracePoint,
    /// BTF tracepoint; the first name the kernel knows wins.
    Btf(&'static [&'static str]),
    Lsm(&'static str),
    FEntry(&'static str),
}

/// What a load left: the BTF tracepoint it was verified for, or the refusal.
pub type Loaded = Result<Option<&'static str>, String>;

/// Threads for a start: enough for a small host's cores; more would only stack up kernel
/// memory (each verification holds its own states) for no gain in wall time.
const MAX_THREADS: usize = 4;

/// Load every `(program, how)` of `jobs` (each once) on up to `MAX_THREADS` threads, the
/// costliest first. Programs missing from the object are left out (the attach loop says so).
/// `trace` gets each program's load time.
pub fn load_all(
    ebpf: &mut Ebpf,
    btf: &AyaBtf,
    jobs: &[(&'static str, Load)],
    sizes: &HashMap<String, u64>,
    trace: bool,
) -> HashMap<&'static str, Loaded> {
    let mut by_name: HashMap<&str, &mut Program> = ebpf.programs_mut().collect();
    let mut queue: Vec<(&'static str, Load, &mut Program)> = Vec::new();
    for &(name, how) in jobs {
        if let Some(p) = by_name.remove(name) {
            queue.push((name, how, p));
        }
    }
    // Popped from the end: the costliest last in the vector starts first.
    queue.sort_by_key(|(name, _, _)| cost(name, sizes));
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_THREADS)
        .min(queue.len().max(1));
    let queue = Mutex::new(queue);
    let done = Mutex::new(HashMap::new());
    std::thread::scope(|s| {
        for i in 0..threads {
            // The guard is dropped inside `and_then`: no load runs under the lock.
            let work = || {
                while let Some((name, how, prog)) = queue.lock().ok().and_then(|mut q| q.pop()) {
                    let t = Instant::now();
                    let r = load_one(prog, how, btf);
                    if trace {
                        eprintln!("verify {name} {:?}", t.elapsed());
                    }
                    if let Ok(mut d) = done.lock() {
                        d.insert(name, r);
                    }
                }
            };
            // A thread that cannot be spawned leaves its share to the others (and to this one).
            if i + 1 == threads
                || std::thread::Builder::new()
                    .name("verify".into())
                    .spawn_scoped(s, work)
                    .is_err()
            {
                work();
            }
        }
    });
    done.into_inner().unwrap_or_default()
}

fn load_one(prog: &mut Program, how: Load, btf: &AyaBtf) -> Loaded {
    let err = |e| format!("{:#}", verbose(e));
    let wrong = |e: aya::programs::ProgramError| format!("{e:#}");
    match how {
        Load::TracePoint => {
            let tp: &mut TracePoint = prog.try_into().map_err(wrong)?;
            tp.load().map_err(err).map(|()| None)
        }
        Load::Lsm(hook) => {
            let p: &mut Lsm = prog.try_into().map_err(wrong)?;
            p.load(hook, btf).map_err(err).map(|()| None)
        }
        Load::FEntry(func) => {
            let p: &mut FEntry = prog.try_into().map_err(wrong)?;
            p.load(func, btf).map_err(err).map(|()| None)
        }
        Load::Btf(names) => {
            let tp: &mut BtfTracePoint = prog.try_into().map_err(wrong)?;
            let mut last = "no candidate tracepoint".to_string();
            for name in names {
                match tp.load(name, btf) {
                    Ok(()) => return Ok(Some(name)),
                    Err(e) => last = err(e),
                }
            }
            Err(last)
        }
    }
}

/// The programs the verifier works longest on, costliest first (instructions it verified on a
/// 6.1 guest). Their bodies are functions of their own, so their symbols alone look small.
pub const COSTLIEST: &[&str] = &[
    "io_uring_submit_req", // 367k
    "sys_enter_io_submit", // 498k, though faster per instruction
    "sys_enter_renameat2", // 270k
    "sys_enter_pwritev2",  // 118k
    "sys_enter_renameat",  // 133k
    "sys_enter_linkat",    // 85k
    "sys_enter_pwritev",   // 56k
];

/// Sort key: the known costliest above all, in their order; then by size.
fn cost(name: &str, sizes: &HashMap<String, u64>) -> (usize, u64) {
    let rank = COSTLIEST
        .iter()
        .position(|c| *c == name)
        .map_or(0, |i| COSTLIEST.len() - i);
    (rank, sizes.get(name).copied().unwrap_or(0))
}

/// Each program's size in the object (its ELF symbol), the order to verify them in: size is a
/// rough but free stand-in for the verifier's work.
pub fn sizes(object: &[u8]) -> HashMap<String, u64> {
    use object::{Object as _, ObjectSymbol as _};
    let Ok(file) = object::File::parse(object) else {
        return HashMap::new();
    };
    file.symbols()
        .filter(|s| s.kind() == object::SymbolKind::Text)
        .filter_map(|s| Some((s.name().ok()?.to_string(), s.size())))
        .collect()
}

/// Keep the verifier log: it is the only useful explanation of a rejected program.
pub fn verbose(e: aya::programs::ProgramError) -> anyhow::Error {
    match e {
        aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let tail: Vec<&str> = log
                .lines()
                .rev()
                .filter(|l| !l.trim().is_empty())
                .take(12)
                .collect();
            if tail.is_empty() {
                return anyhow::anyhow!("{io_error}");
            }
            anyhow::anyhow!(
                "{io_error}; verifier: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            )
        }
        other => anyhow::Error::new(other),
    }
}
