//! Rules stage, what a rule sees and returns: the event kinds rules are indexed by, the
//! actor's trust, the compiled detection lists, the bounded state rules share, and `Ctx`/`Hit`.

use super::{
    glob::Glob,
    qemu_tools,
    state::{Bounded, Rate},
    window::{LocalTime, Window},
};
use crate::{
    event::{Action, Event},
    record::Severity,
};

/// Event kinds the rule index is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Write,
    Create,
    Rename,
    Delete,
    Attr,
    Ioctl,
    /// A watched file opened for writing (SM-K006: qemu-nbd serving it).
    Open,
    /// The agent's own `blinded` event: records about an image were lost (SM-A001).
    Loss,
    /// A watched file put into an io_uring registered-file table (SM-U001).
    Register,
    Other,
}

pub(super) const KINDS: usize = 10;

impl Kind {
    /// Which rules an action reaches. Exhaustive: a new action must be placed here.
    pub fn of(action: Action) -> Kind {
        use Action as A;
        match action {
            A::Create | A::Mkdir | A::Link | A::Symlink => Kind::Create,
            A::Rename => Kind::Rename,
            A::Unlink | A::Rmdir => Kind::Delete,
            A::Chmod | A::Chown | A::Utimes => Kind::Attr,
            A::Ioctl => Kind::Ioctl,
            A::Blinded => Kind::Loss,
            A::IoUringRegisterFiles => Kind::Register,
            A::OpenWrite => Kind::Open,
            A::Fork | A::Exec | A::Exit | A::Unset => Kind::Other,
            // The agent's own word that an alias ended: no actor to judge.
            A::LoopDetached => Kind::Other,
            // Circuit-breaker records: alerts of their own.
            A::Kill | A::Stop | A::Freeze | A::WouldKill | A::WouldStop | A::WouldFreeze => {
                Kind::Other
            }
            A::Write
            | A::Pwrite64
            | A::Writev
            | A::Pwritev
            | A::Pwritev2
            | A::IoUringWrite
            | A::IoUringWritev
            | A::IoUringWriteFixed
            | A::AioPwrite
            | A::AioPwritev
            | A::CopyFileRange
            | A::Splice
            | A::Sendfile
            | A::MmapSharedWrite
            | A::VfsWrite
            | A::WriteUnknown
            | A::Fallocate
            | A::PunchHole
            | A::ZeroRange
            | A::CollapseRange
            | A::InsertRange
            | A::Truncate
            | A::CloneRange
            | A::OpenTruncate
            | A::NamespaceUnknown => Kind::Write,
            // LSM decisions: `enforce::decision_alert` judges them; the write rules saw them
            // so far and still do.
            A::DenyWrite
            | A::DenyOpenWrite
            | A::DenyTruncate
            | A::DenyUnlink
            | A::DenyRename
            | A::DenyLink
            | A::DenyMmapWrite
            | A::DenyIoctl
            | A::WouldDenyWrite
            | A::WouldDenyOpenWrite
            | A::WouldDenyTruncate
            | A::WouldDenyUnlink
            | A::WouldDenyRename
            | A::WouldDenyLink
            | A::WouldDenyMmapWrite
            | A::WouldDenyIoctl
            | A::DenyUnknown => Kind::Write,
        }
    }
    pub(super) fn idx(self) -> usize {
        self as usize
    }
}

/// What a rule returns when it fires.
#[derive(Debug, Default)]
pub struct Hit {
    pub message: String,
    /// Earlier events that are part of the finding (sequence and rate rules).
    pub related: Vec<u64>,
    /// Overrides the rule's default severity (unless the policy set one).
    pub severity: Option<Severity>,
}

impl Hit {
    pub fn msg(m: String) -> Hit {
        Hit {
            message: m,
            ..Default::default()
        }
    }
}

/// Which actor groups trust the acting process.
#[derive(Debug, Default, Clone)]
pub struct Trust {
    /// Groups whose identity and lineage constraints the actor meets.
    pub groups: Vec<String>,
    /// The executable is one some group lists (whatever its lineage).
    pub identity: bool,
    /// A QEMU block-layer tool trusted as `qemu` (qemu-io, qemu-nbd, qemu-storage-daemon).
    pub qemu_tool: Option<qemu_tools::Tool>,
    /// The block-layer tool the executable is, by the `qemu` identity it resolved from,
    /// trusted or not (`-f raw` too): what it serves, not how it writes (SM-K006).
    pub block_tool: Option<qemu_tools::Tool>,
}

impl Trust {
    /// Trusted by this group: identity and lineage constraints.
    pub fn by(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
    pub fn any(&self) -> bool {
        !self.groups.is_empty()
    }
    pub fn identity_any(&self) -> bool {
        self.identity
    }
}

/// Compiled `[detection]` lists.
pub struct Detection {
    pub image_extensions: Vec<String>,
    pub volatile: Vec<Glob>,
    pub ransom: Vec<Glob>,
    pub hidden_extensions: Vec<String>,
    /// (glob, matches the executable path rather than the name).
    pub suspicious: Vec<(Glob, bool)>,
    pub admin_users: Vec<u32>,
    pub dedupe_ns: i128,
}

/// Bounded state shared by the rules.
pub struct State {
    pub known_qcow2: Bounded<(u32, u64), ()>,
    /// Last untrusted snapshot-table write per file: (seq, time).
    pub table_writes: Bounded<(u32, u64), (u64, i128)>,
    pub renames: Bounded<u32, Rate>,
    pub deletions: Rate,
    pub freezes: Bounded<(u32, u64), Box<Event>>,
    pub created: Bounded<(u32, Vec<u8>), i128>,
    pub disguised: Bounded<(u32, u64), ()>,
    /// Processes (pid, start) already given SM-L001: a reused pid is a new process.
    pub lineage_seen: Bounded<(u32, u64), ()>,
    pub(super) dedupe: Bounded<DedupeKey, i128>,
}

/// Caps for every state map.
pub const STATE_CAP: usize = 4096;

impl State {
    pub(super) fn new() -> State {
        State {
            known_qcow2: Bounded::new(STATE_CAP),
            table_writes: Bounded::new(1024),
            renames: Bounded::new(256),
            deletions: Rate::default(),
            freezes: Bounded::new(256),
            created: Bounded::new(1024),
            disguised: Bounded::new(STATE_CAP),
            lineage_seen: Bounded::new(1024),
            dedupe: Bounded::new(STATE_CAP),
        }
    }

    /// Drop what `rule` alone keeps (its rate or sequence window): it restarts empty. Facts
    /// every rule leans on (`observe_into`) are kept; dedupe is per rule index (`Engine::inherit`).
    pub(super) fn forget(&mut self, rule: &str) {
        match rule {
            "SM-R001" => self.renames.clear(),
            "SM-B001" => self.deletions.clear(),
            "SM-K004" => self.freezes.clear(),
            "SM-H002" => self.disguised.clear(),
            "SM-L001" => self.lineage_seen.clear(),
            _ => {}
        }
    }

    /// Sizes, for the stats record and the bounded-state tests.
    pub fn sizes(&self) -> serde_json::Value {
        serde_json::json!({
            "known_qcow2": self.known_qcow2.len(),
            "table_writes": self.table_writes.len(),
            "renames": self.renames.len(),
            "deletions": self.deletions.hits.len(),
            "freezes": self.freezes.len(),
            "created": self.created.len(),
            "disguised": self.disguised.len(),
            "lineage_seen": self.lineage_seen.len(),
            "dedupe": self.dedupe.len(),
        })
    }
}

/// What a rule sees.
pub struct Ctx<'a> {
    pub ev: &'a Event,
    pub trust: &'a Trust,
    pub det: &'a Detection,
    pub st: &'a mut State,
    pub threshold: u32,
    pub window_ns: i128,
    pub windows: &'a [Window],
    pub local: &'a dyn LocalTime,
    /// Index of the rule being evaluated, and whether its hits are deduplicated.
    pub rule: usize,
    pub dedupes: bool,
}

impl Ctx<'_> {
    /// A hit now would be dropped by dedupe (`Engine::finish`): the rule still returns it,
    /// so what it supersedes and the state it keeps do not change, but it need not spend
    /// time on a message nobody will read (an untrusted header writer hits on every write).
    pub fn quiet(&self) -> bool {
        self.dedupes && dedupe_fresh(self.st, self.det, &dedupe_key(self.rule, self.ev), self.ev)
    }
}

/// (rule, (pid, process start), dev, ino): a reused pid is another process.
pub(super) type DedupeKey = (usize, (u32, u64), u32, u64);

/// Alerts of one rule are deduplicated per acting process and file. A rename or link is
/// about its target: the identity it replaced, else its name (two doctored images renamed
/// into place by one process are two findings).
pub(super) fn dedupe_key(rule: usize, ev: &Event) -> DedupeKey {
    let who = (ev.process.pid, ev.process.start_ns);
    let renamed = matches!(ev.action, Action::Rename | Action::Link);
    let f = if renamed {
        ev.target.as_ref()
    } else {
        ev.file.as_ref()
    };
    let (dev, ino) = f.map(|f| (f.dev, f.ino)).unwrap_or((0, 0));
    if renamed && ino == 0 {
        if let Some(p) = f.and_then(|f| f.path.as_ref()) {
            return (rule, who, u32::MAX, snapmon_common::fnv1a(&p.0));
        }
    }
    (rule, who, dev, ino)
}

pub(super) fn dedupe_fresh(st: &State, det: &Detection, key: &DedupeKey, ev: &Event) -> bool {
    st.dedupe
        .get(key)
        .is_some_and(|&t| ev.ts_unix_ns - t < det.dedupe_ns)
}
