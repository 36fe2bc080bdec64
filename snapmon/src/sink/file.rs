//! File sink: appends records, rotates by size or age (`PATH.1` … `PATH.N`), reopens on
//! request (logrotate's SIGHUP), flushes and fsyncs by policy, and keeps the hash chain.
//!
//! Honest about what reached the file: records sit in the sink's own buffer until a write
//! hands them to the kernel, and only then count as `written`. A failed write (a full disk)
//! counts every record it did not store as a drop (`no_space` or `write_error`), says so on
//! stderr once, cuts the partial line it left so the file stays on a line boundary, and rolls
//! the hash chain back to the last stored line; the first line written after recovery is a
//! `log_resumed` record that states how many records were lost and why. A file left by an
//! earlier run is continued on a fresh line after a `log_resumed` record that says whether
//! that run closed it (see `sink::chain`).

use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use super::{
    chain::{self, Chain},
    config::{Format, SinkConfig, SyncPolicy},
    counters::{Cause, SinkCounters, RELAXED},
    json,
    render::{render, render_id, RecordId},
    writer::SinkWriter,
};
use crate::{event::Ancestor, record::Record};

/// Buffered bytes that trigger a write to the kernel whatever the flush policy.
const BUF_MAX: usize = 64 * 1024;

/// Processes whose ancestry the current file is remembered to carry; past this the memory
/// starts over (the next record of each is full again).
const CARRIED_MAX: usize = 4096;

/// One line in the buffer.
struct Mark {
    /// Where it ends in `buf`.
    end: usize,
    kind: LineKind,
    /// Chain state after this line (chained sinks).
    link: Option<(u64, [u8; 32])>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum LineKind {
    /// A record the sink was given: counted as written once stored.
    Record,
    /// A line the chain writes itself (header, checkpoint, footer).
    Control,
    /// The `log_resumed` line that reports a loss: the loss is settled once it is stored.
    Resumed,
    /// The newline that ends a partial line an earlier run or a failed write left.
    Newline,
}

/// Records lost to failed writes and not yet reported in the file.
struct Loss {
    records: u64,
    error: String,
    first_lost_at: String,
}

pub struct FileSink {
    path: PathBuf,
    format: Format,
    colour: bool,
    host: String,
    rotate_size: Option<u64>,
    rotate_every: Option<Duration>,
    keep: u64,
    flush: SyncPolicy,
    fsync: SyncPolicy,
    interval: Duration,
    file: Option<File>,
    /// Lines not yet handed to the kernel.
    buf: Vec<u8>,
    marks: Vec<Mark>,
    /// Bytes the kernel has for the file.
    stored: u64,
    opened: Instant,
    last_sync: Instant,
    /// Buffered lines, or lines the kernel has that were not fsynced yet.
    dirty: bool,
    chain: Option<Chain>,
    /// The record id's text, rebuilt in place for each record.
    id_text: String,
    /// Chain state after the last stored line: a failed write rolls back to it.
    durable: (u64, [u8; 32]),
    loss: Option<Loss>,
    /// The file does not end with a newline (a cut that could not be undone).
    partial: bool,
    /// What the previous run left, for the `started` record.
    previous_run: Option<Value>,
    /// When stderr last heard of a failed write: a disk that flaps between full and not is
    /// said once a minute, not once a record.
    told: Option<Instant>,
    /// The current loss was said on stderr, so its end is too.
    told_loss: bool,
    counters: Arc<SinkCounters>,
    /// Processes (entity id → ancestry) whose ancestry a record already stored in, or
    /// buffered for, the current file carried in full: their next events with the same
    /// ancestry are lean (JSON only). Forgotten whenever a file starts or a write fails, so
    /// every file holds each ancestry it refers to.
    carried: HashMap<String, Arc<Vec<Ancestor>>>,
}

fn open_append(p: &Path) -> io::Result<File> {
    // Readable too: the last byte tells whether an earlier run left a partial line.
    OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(0o640)
        .open(p)
}

fn numbered(p: &Path, n: u64) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// The loss cause of a failed write.
fn cause_of(e: &io::Error) -> Cause {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => Cause::NoSpace,
        _ => Cause::WriteError,
    }
}

impl FileSink {
    pub fn open(
        c: &SinkConfig,
        format: Format,
        host: String,
        counters: Arc<SinkCounters>,
    ) -> io::Result<Self> {
        let o = c.options();
        let path = o.path.clone().unwrap_or_default();
        let chained = o.chain.unwrap_or(format != Format::Tail);
        // Where the previous run (or the rotated file) left the chain.
        let resume = [path.clone(), numbered(&path, 1)]
            .iter()
            .find(|p| fs::metadata(p).is_ok_and(|m| m.len() > 0))
            .and_then(|p| chain::resume_point(p).ok().flatten());
        let chain = if chained {
            let key = match &o.key_file {
                Some(k) => Some(super::key::load_key(k).map_err(io::Error::other)?),
                None => None,
            };
            let (seq, hash) = resume
                .as_ref()
                .map(|r| (r.link.seq + 1, r.link.hash))
                .unwrap_or((0, chain::ZERO));
            Some(Chain::new(key, o.checkpoint_every.unwrap_or(1000), seq, hash).with_format(format))
        } else {
            None
        };
        let durable = chain
            .as_ref()
            .map(|c| (c.seq, c.prev))
            .unwrap_or((0, chain::ZERO));
        let mut s = FileSink {
            path,
            format,
            colour: o.colour.unwrap_or(false),
            host,
            rotate_size: o.rotate_size,
            rotate_every: o.rotate_interval.map(Duration::from_secs),
            keep: o.keep.unwrap_or(5).max(1),
            flush: o.flush.unwrap_or_default(),
            fsync: o.fsync.unwrap_or(SyncPolicy::Never),
            interval: c.flush_interval(),
            file: None,
            buf: Vec::with_capacity(BUF_MAX + 4096),
            marks: Vec::new(),
            stored: 0,
            opened: Instant::now(),
            last_sync: Instant::now(),
            dirty: false,
            chain,
            id_text: String::new(),
            durable,
            loss: None,
            partial: false,
            told: None,
            told_loss: false,
            previous_run: resume.as_ref().map(chain::Resume::describe),
            counters,
            carried: HashMap::new(),
        };
        s.open_current(resume.as_ref())?;
        // The opening lines go to the file now: a start on a full disk is an error.
        s.flush_buf()?;
        Ok(s)
    }

    /// What the previous run left in this sink's file: `None` for a new file.
    pub fn previous_run(&self) -> Option<Value> {
        self.previous_run.clone()
    }

    /// Open `path` and put its first line: `log_resumed` when continuing what an earlier run
    /// left (`resume`), `log_header` otherwise.
    fn open_current(&mut self, resume: Option<&chain::Resume>) -> io::Result<()> {
        let f = open_append(&self.path)?;
        self.stored = f.metadata().map(|m| m.len()).unwrap_or(0);
        // A partial last line (a killed run): start on a fresh line.
        if self.stored > 0 && !chain::ends_with_newline(&f, self.stored)? {
            self.partial = true;
        }
        self.file = Some(f);
        self.opened = Instant::now();
        self.carried.clear();
        self.end_partial_line();
        if let Some(c) = &mut self.chain {
            let line = match resume {
                Some(r) => c.resumed(&self.host, &self.path, r.detail()),
                None => c.header(&self.host, &self.path),
            };
            self.put(line, LineKind::Control);
        }
        self.counters.set_state("open");
        Ok(())
    }

    fn end_partial_line(&mut self) {
        if std::mem::take(&mut self.partial) {
            self.put(b"\n".to_vec(), LineKind::Newline);
        }
    }

    fn put(&mut self, line: Vec<u8>, kind: LineKind) {
        self.buf.extend_from_slice(&line);
        self.mark(kind);
    }

    /// The line that now ends the buffer is complete: remember where it ends.
    fn mark(&mut self, kind: LineKind) {
        let link = self.chain.as_ref().map(|c| (c.seq, c.prev));
        self.marks.push(Mark {
            end: self.buf.len(),
            kind,
            link,
        });
        self.dirty = true;
    }

    /// Logical size: stored plus buffered.
    fn size(&self) -> u64 {
        self.stored + self.buf.len() as u64
    }

    /// Hand the buffer to the kernel. On failure, account for what was lost and leave the
    /// file on a line boundary; the error is returned for rotation and start-up to act on.
    fn flush_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let Some(f) = &mut self.file else {
            return Err(io::Error::other("file not open"));
        };
        let mut done = 0;
        let mut err = None;
        while done < self.buf.len() {
            match f.write(&self.buf[done..]) {
                Ok(0) => {
                    err = Some(io::Error::from(io::ErrorKind::WriteZero));
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        let whole = self.marks.iter().take_while(|m| m.end <= done).count();
        let mut written = 0;
        for m in &self.marks[..whole] {
            match m.kind {
                LineKind::Record => written += 1,
                LineKind::Resumed => {
                    if let Some(l) = self.loss.take() {
                        if std::mem::take(&mut self.told_loss) {
                            eprintln!(
                                "snapmon: sink {}: writing again; {} record(s) were lost to: {}",
                                self.counters.name, l.records, l.error
                            );
                        }
                    }
                }
                LineKind::Newline => self.partial = false,
                LineKind::Control => {}
            }
            if let Some(l) = m.link {
                self.durable = l;
            }
        }
        self.counters.written.fetch_add(written, RELAXED);
        let kept = whole.checked_sub(1).map_or(0, |i| self.marks[i].end);
        let lost: u64 = self.marks[whole..]
            .iter()
            .filter(|m| m.kind == LineKind::Record)
            .count() as u64;
        let newline_lost = self.marks[whole..]
            .iter()
            .any(|m| m.kind == LineKind::Newline);
        self.buf.clear();
        self.marks.clear();
        let Some(e) = err else {
            self.stored += done as u64;
            if self.loss.is_none() {
                self.counters.set_state("open");
            }
            return Ok(());
        };
        // Cut what the failed write left of a line: the file stays on a line boundary.
        let at = self.stored + kept as u64;
        if done > kept && f.set_len(at).is_err() {
            self.partial = true;
        }
        self.partial |= newline_lost;
        self.stored = at;
        if let Some(c) = &mut self.chain {
            c.rollback(self.durable.0, self.durable.1);
        }
        // The lost lines may have been the ones that carried an ancestry.
        self.carried.clear();
        self.counters.lose(cause_of(&e), lost);
        self.counters.set_state(&format!("error: {e}"));
        match &mut self.loss {
            Some(l) => l.records += lost,
            None => {
                if self
                    .told
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
                {
                    eprintln!(
                        "snapmon: sink {}: write failed: {e}; records are dropped and counted ({}) until a write succeeds",
                        self.counters.name,
                        cause_of(&e).as_str()
                    );
                    self.told = Some(Instant::now());
                    self.told_loss = true;
                }
                self.loss = Some(Loss {
                    records: lost,
                    error: e.to_string(),
                    first_lost_at: crate::clock::rfc3339(crate::clock::now_unix_ns()),
                });
            }
        }
        Err(e)
    }

    fn sync(&mut self, fsync: bool) -> io::Result<()> {
        self.flush_buf()?;
        if fsync {
            if let Some(f) = &self.file {
                f.sync_data()?;
            }
        }
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Footer, flush and fsync, then let go of the file (kept open when that failed).
    fn close_current(&mut self, reason: &str) -> io::Result<()> {
        if self.file.is_none() {
            return Ok(());
        }
        if let Some(c) = &mut self.chain {
            let f = c.footer(&self.host, reason);
            self.put(f, LineKind::Control);
        }
        self.sync(self.fsync != SyncPolicy::Never)?;
        self.file = None;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.close_current("rotate")?;
        for n in (1..self.keep).rev() {
            let from = numbered(&self.path, n);
            if from.exists() {
                fs::rename(&from, numbered(&self.path, n + 1))?;
            }
        }
        fs::rename(&self.path, numbered(&self.path, 1))?;
        self.counters.rotations.fetch_add(1, RELAXED);
        self.open_current(None)
    }

    fn due_rotation(&self, next: usize) -> bool {
        self.due_rotation_from(self.size(), next)
    }

    /// [`Self::due_rotation`] for a file of logical size `size`.
    fn due_rotation_from(&self, size: u64, next: usize) -> bool {
        if size == 0 {
            return false;
        }
        self.rotate_size.is_some_and(|m| size + next as u64 > m)
            || self
                .rotate_every
                .is_some_and(|d| self.opened.elapsed() >= d)
    }

    /// The `log_resumed` line that reports records lost to failed writes.
    fn put_loss(&mut self) {
        let Some(l) = &self.loss else { return };
        let detail = json!({
            "reason": "write_error",
            "lost_records": l.records,
            "error": l.error,
            "first_lost_at": l.first_lost_at,
        });
        if let Some(c) = &mut self.chain {
            let line = c.resumed(&self.host, &self.path, detail);
            self.put(line, LineKind::Resumed);
        } else {
            // Unchained (tail or chain=false): the loss is still said in the file.
            let r = Record::State(crate::record::StateRecord {
                action: "log_resumed",
                detail,
            });
            let mut line = render(self.format, &r, &self.host, self.colour);
            line.push(b'\n');
            self.put(line, LineKind::Resumed);
        }
    }

    /// Reopen after a failed reopen or rotation (tried again before every record).
    fn ensure_open(&mut self) -> io::Result<()> {
        if self.file.is_some() {
            return Ok(());
        }
        let f = open_append(&self.path)?;
        self.stored = f.metadata().map(|m| m.len()).unwrap_or(0);
        self.partial |= self.stored > 0 && !chain::ends_with_newline(&f, self.stored)?;
        self.file = Some(f);
        self.opened = Instant::now();
        self.carried.clear();
        self.end_partial_line();
        if let Some(c) = &mut self.chain {
            let h = c.header(&self.host, &self.path);
            self.put(h, LineKind::Control);
        }
        Ok(())
    }

    /// Whether `r` can go lean in the current file: an event of a process whose ancestry,
    /// as it is now, the file already carried. Otherwise its ancestry is remembered as carried
    /// now (its record is rendered in full). By content, not by the lineage stage's build
    /// number: that is renewed at every fork or exit on the host, the ancestry seldom.
    fn lean(&mut self, r: &Record) -> bool {
        let Record::Event(e) = r else { return false };
        let p = &e.process;
        if self.format != Format::Json || e.no_actor || p.entity_id.is_empty() {
            return false;
        }
        if let Some(c) = self.carried.get_mut(p.entity_id.as_str()) {
            if Arc::ptr_eq(c, &p.ancestors) {
                return true;
            }
            if **c == *p.ancestors {
                // The same ancestry in a new build: compare by pointer from now on.
                *c = p.ancestors.clone();
                return true;
            }
        }
        if self.carried.len() >= CARRIED_MAX {
            self.carried.clear();
        }
        self.carried
            .insert(p.entity_id.clone(), p.ancestors.clone());
        false
    }

    /// Append `r` to the write buffer, unsealed and without its newline.
    fn render_into(&mut self, id: RecordId, r: &Record, lean: bool) {
        match self.format {
            Format::Json => {
                self.id_text.clear();
                id.push_text(&mut self.id_text);
                json::write_record_lean(&mut self.buf, r, &self.host, Some(&self.id_text), lean)
            }
            _ => self.buf.extend_from_slice(&render_id(
                self.format,
                r,
                Some(id),
                &self.host,
                self.colour,
            )),
        }
    }

    /// End the record that starts at `start` in the buffer: the chain member, or a newline.
    fn seal(&mut self, start: usize) {
        match &mut self.chain {
            Some(c) => c.seal_in(&mut self.buf, start),
            None => self.buf.push(b'\n'),
        }
    }

    /// Buffer one record (and the lines that go before it); write by policy. Failed writes
    /// are counted by `flush_buf`.
    fn write_inner(&mut self, id: RecordId, r: &Record) -> io::Result<()> {
        self.end_partial_line();
        if self.loss.is_some() && !self.marks.iter().any(|m| m.kind == LineKind::Resumed) {
            self.put_loss();
        }
        let lean = self.lean(r);
        // Rendered straight into the write buffer: no copy, no allocation per record.
        let start = self.buf.len();
        self.render_into(id, r, lean);
        // Rotate before sealing so the record's chain seq lands after the new header.
        let chain_len = if self.chain.is_some() { 180 } else { 1 };
        let body = self.buf.len() - start;
        if self.due_rotation_from(self.stored + start as u64, body + chain_len) {
            // Out of the buffer while the old file is closed: it goes to the new one.
            self.buf.truncate(start);
            // A failed rotation keeps writing to the current file (or reopens it), and is
            // tried again at the next record.
            if let Err(e) = self.rotate() {
                self.counters.set_state(&format!("error: {e}"));
                self.ensure_open()?;
            }
            // The file it lands in may not have carried its ancestry.
            let lean = lean && self.lean(r);
            let start = self.buf.len();
            self.render_into(id, r, lean);
            self.seal(start);
        } else {
            self.seal(start);
        }
        self.mark(LineKind::Record);
        if self.chain.as_ref().is_some_and(Chain::checkpoint_due) {
            if let Some(c) = &mut self.chain {
                let cp = c.checkpoint(&self.host);
                self.put(cp, LineKind::Control);
            }
        }
        match (self.flush, self.fsync) {
            (_, SyncPolicy::Record) => self.sync(true)?,
            (SyncPolicy::Record, _) => self.sync(false)?,
            _ if self.buf.len() >= BUF_MAX => self.flush_buf()?,
            _ => {}
        }
        Ok(())
    }
}

impl SinkWriter for FileSink {
    fn write(&mut self, r: &Record) {
        self.write_id(RecordId::next(), r)
    }

    fn write_id(&mut self, id: RecordId, r: &Record) {
        // A record that cannot even be buffered (the file cannot be opened) is lost here;
        // records lost in a failed write are counted by the write.
        let buffered = self.marks.len();
        if let Err(e) = self.ensure_open().and_then(|_| self.write_inner(id, r)) {
            if self.file.is_none() && self.marks.len() <= buffered {
                self.counters.lose(cause_of(&e), 1);
                self.counters.set_state(&format!("error: {e}"));
            }
        }
    }

    fn idle(&mut self) {
        if self.dirty && (self.flush == SyncPolicy::Batch || self.fsync == SyncPolicy::Batch) {
            let _ = self.sync(self.fsync == SyncPolicy::Batch);
        }
    }

    fn tick(&mut self) {
        if self.dirty
            && self.last_sync.elapsed() >= self.interval
            && (self.flush == SyncPolicy::Interval || self.fsync == SyncPolicy::Interval)
        {
            let _ = self.sync(self.fsync == SyncPolicy::Interval);
        }
        if self.file.is_some() && self.rotate_every.is_some() && self.due_rotation(0) {
            if let Err(e) = self.rotate() {
                self.counters.set_state(&format!("error: {e}"));
            }
        }
    }

    fn reopen(&mut self) {
        let r = self
            .close_current("reopen")
            .and_then(|_| self.open_current(None));
        if let Err(e) = r {
            self.counters.set_state(&format!("error: {e}"));
        }
    }

    fn close(&mut self) {
        let _ = self.close_current("shutdown");
        // Whatever could not be stored by now is lost.
        self.counters.set_state("closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::{chain::verify, fixtures};

    pub(crate) fn tempdir(tag: &str) -> crate::testutil::TmpDir {
        crate::testutil::TmpDir::new(tag)
    }

    fn sink(spec: &str) -> (FileSink, Arc<SinkCounters>) {
        let c = SinkConfig::parse_spec(spec).unwrap();
        let counters = Arc::new(SinkCounters::new(c.name(), "file", Format::Json.as_str()));
        let s = FileSink::open(&c, Format::Json, "h".into(), counters.clone()).unwrap();
        (s, counters)
    }

    fn lines(p: &Path) -> Vec<String> {
        fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    #[test]
    fn size_rotation_keeps_n_files_and_one_unbroken_chain() {
        let d = tempdir("rot");
        let p = d.join("s.jsonl");
        let (mut s, c) = sink(&format!(
            "file:{},rotate_size=4K,keep=3,flush=record",
            p.display()
        ));
        for i in 0..40 {
            s.write(&Record::Event(fixtures::event(i)));
        }
        s.close();
        assert_eq!(c.written.load(RELAXED), 40);
        assert!(c.rotations.load(RELAXED) >= 3);
        // keep=3: PATH.1..PATH.3 exist, PATH.4 never does.
        for n in 1..=3 {
            assert!(numbered(&p, n).exists(), "{n}");
        }
        assert!(!numbered(&p, 4).exists());
        for f in [p.clone(), numbered(&p, 1), numbered(&p, 2)] {
            let m = fs::metadata(&f).unwrap().len();
            assert!(m <= 4096 + 2048, "{} is {m} bytes", f.display());
            let l = lines(&f);
            assert!(l[0].contains("\"log_header\""), "{}", l[0]);
            assert!(l.last().unwrap().contains("\"log_closed\""));
        }
        // Oldest files were deleted, so the chain is checked from PATH.3 on: in any order.
        let files = vec![p.clone(), numbered(&p, 2), numbered(&p, 3), numbered(&p, 1)];
        let rep = verify(&files, None, false).unwrap();
        assert!(rep.findings.is_empty(), "{:#?}", rep.findings);
        assert_eq!(rep.files[0], numbered(&p, 3));
        // The newest record (seq 39 of the events) is in the live file.
        assert!(lines(&p).iter().any(|l| l.contains("\"sequence\":39")));
    }

    #[test]
    fn reopen_after_logrotate_moves_the_file_continues_the_chain() {
        let d = tempdir("reopen");
        let p = d.join("s.jsonl");
        let (mut s, _) = sink(&format!("file:{},flush=record", p.display()));
        for i in 0..3 {
            s.write(&Record::Event(fixtures::event(i)));
        }
        // logrotate (create mode): rename, then SIGHUP.
        fs::rename(&p, d.join("s.jsonl.1")).unwrap();
        s.write(&Record::Event(fixtures::event(3)));
        s.reopen();
        s.write(&Record::Event(fixtures::event(4)));
        s.close();
        let old = lines(&d.join("s.jsonl.1"));
        // Written before the reopen: still lands in the renamed file, followed by its footer.
        assert!(old[4].contains("\"sequence\":3"), "{old:?}");
        assert!(old[5].contains("log_closed") && old[5].contains("\"reopen\""));
        let new = lines(&p);
        assert!(new[0].contains("log_header"));
        assert!(new[1].contains("\"sequence\":4"));
        let rep = verify(&[p.clone(), d.join("s.jsonl.1")], None, false).unwrap();
        assert!(rep.findings.is_empty(), "{:#?}", rep.findings);
        // A reopen with no rotation appends footer + header to the same file: still intact.
        let (mut s, _) = sink(&format!("file:{},flush=record", p.display()));
        s.reopen();
        s.write(&Record::Event(fixtures::event(5)));
        s.close();
        let rep = verify(&[p.clone(), d.join("s.jsonl.1")], None, false).unwrap();
        assert!(rep.findings.is_empty(), "{:#?}", rep.findings);
    }

    #[test]
    fn restart_continues_the_chain_and_flush_policies_apply() {
        let d = tempdir("restart");
        let p = d.join("s.jsonl");
        let (mut s, _) = sink(&format!("file:{},flush=never", p.display()));
        s.write(&Record::Event(fixtures::event(0)));
        // flush=never: the record has not reached the file yet (64 KiB buffer); the header
        // was written at open, so a start on a full disk fails at once.
        assert_eq!(lines(&p).len(), 1);
        assert!(lines(&p)[0].contains("log_header"));
        s.close();
        let (mut s, _) = sink(&format!(
            "file:{},flush=interval,flush_interval=1ms,fsync=interval",
            p.display()
        ));
        s.write(&Record::Event(fixtures::event(1)));
        std::thread::sleep(Duration::from_millis(5));
        s.tick();
        assert!(lines(&p).iter().any(|l| l.contains("\"sequence\":1")));
        s.close();
        let rep = verify(std::slice::from_ref(&p), None, false).unwrap();
        assert!(rep.findings.is_empty(), "{:#?}", rep.findings);
        assert_eq!(rep.first_seq, Some(0));
    }

    /// Whether each line of `p` (events and alerts only) carries `snapmon.process.ancestors`.
    fn carries_ancestry(p: &Path) -> Vec<(String, bool)> {
        lines(p)
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|v| v["process"].is_object())
            .map(|v| {
                let kind = v["event"]["kind"].as_str().unwrap().to_string();
                (kind, v["snapmon"]["process"]["ancestors"].is_array())
            })
            .collect()
    }

    fn build(seq: u64, revision: u64) -> Record {
        let mut e = fixtures::event(seq);
        e.process.revision = revision;
        Record::Event(e)
    }

    /// The fixture's process after a reparent to init (ancestry changed, build renumbered).
    fn reparented(seq: u64) -> Record {
        let mut e = fixtures::event(seq);
        e.process.ancestors = vec![Ancestor {
            pid: 1,
            name: "systemd".into(),
            ..Default::default()
        }]
        .into();
        e.process.revision = 9;
        Record::Event(e)
    }

    #[test]
    fn ancestry_is_written_once_per_process_ancestry_and_file_and_replays_whole() {
        let d = tempdir("lean");
        let p = d.join("s.jsonl");
        let (mut s, _) = sink(&format!("file:{},flush=record", p.display()));
        s.write(&build(0, 7));
        s.write(&build(1, 7));
        // Alerts stand alone: always the whole ancestry.
        let mut a = fixtures::alert(2, crate::record::Severity::High);
        if let Record::Alert(a) = &mut a {
            a.event.process.revision = 7;
        }
        s.write(&a);
        s.write(&build(3, 7));
        // Rebuilt by the lineage stage (any fork or exit on the host renumbers), or not
        // numbered at all: the same ancestry, so still lean.
        s.write(&build(4, 8));
        s.write(&build(5, 0));
        // Reparented: the new ancestry is written once, then the old one again.
        s.write(&reparented(6));
        s.write(&reparented(7));
        s.write(&build(8, 10));
        s.write(&build(9, 10));
        // logrotate moved the file: the new one carries its own.
        fs::rename(&p, d.join("s.jsonl.1")).unwrap();
        s.reopen();
        s.write(&build(10, 10));
        s.write(&build(11, 10));
        s.close();
        let has =
            |f: &Path| -> Vec<bool> { carries_ancestry(f).into_iter().map(|x| x.1).collect() };
        assert_eq!(
            has(&d.join("s.jsonl.1")),
            [true, false, true, false, false, false, true, false, true, false]
        );
        assert_eq!(carries_ancestry(&d.join("s.jsonl.1"))[2].0, "alert");
        assert_eq!(has(&p), [true, false]);
        let l = lines(&d.join("s.jsonl.1"));
        assert!(
            l[2].len() + 60 < l[1].len(),
            "lean {} vs {}",
            l[2].len(),
            l[1].len()
        );
        // Replay gives every lean event its ancestry back, from the file alone.
        let whole = [(4000, "bash"), (900, "sshd")];
        let init = [(1, "systemd")];
        let want: [&[(u32, &str)]; 9] = [
            &whole, &whole, &whole, &whole, &whole, &init, &init, &whole, &whole,
        ];
        for (f, want) in [(d.join("s.jsonl.1"), &want[..]), (p.clone(), &want[7..])] {
            let mut seen = crate::rules::replay::Ancestries::default();
            let mut got = Vec::new();
            for (i, l) in lines(&f).iter().enumerate() {
                if let Some(e) = crate::rules::replay::parse_line_with(l, i + 1, &mut seen).unwrap()
                {
                    let a: Vec<(u32, String)> = e
                        .process
                        .ancestors
                        .iter()
                        .map(|a| (a.pid, a.name.clone()))
                        .collect();
                    got.push(a);
                }
            }
            let want: Vec<Vec<(u32, String)>> = want
                .iter()
                .map(|w| w.iter().map(|(p, n)| (*p, n.to_string())).collect())
                .collect();
            assert_eq!(got, want, "{}", f.display());
        }
        let rep = verify(&[p.clone(), d.join("s.jsonl.1")], None, false).unwrap();
        assert!(rep.findings.is_empty(), "{:#?}", rep.findings);
    }

    #[test]
    fn every_rotated_file_carries_the_ancestry_its_lean_lines_refer_to() {
        let d = tempdir("leanrot");
        let p = d.join("s.jsonl");
        let (mut s, c) = sink(&format!(
            "file:{},rotate_size=4K,keep=9,flush=record",
            p.display()
        ));
        for i in 0..40 {
            s.write(&build(i, 7));
        }
        s.close();
        assert!(c.rotations.load(RELAXED) >= 3);
        for f in [p.clone(), numbered(&p, 1), numbered(&p, 2), numbered(&p, 3)] {
            let has: Vec<bool> = carries_ancestry(&f).into_iter().map(|x| x.1).collect();
            assert!(has.len() >= 2, "{}: {has:?}", f.display());
            assert!(has[0], "{}: the first event is whole", f.display());
            assert!(!has[1..].iter().any(|&x| x), "{}: {has:?}", f.display());
        }
    }

    #[test]
    fn time_rotation_on_tick() {
        let d = tempdir("trot");
        let p = d.join("s.jsonl");
        let (mut s, c) = sink(&format!("file:{},rotate_interval=1s", p.display()));
        s.write(&Record::Event(fixtures::event(0)));
        s.tick();
        assert_eq!(c.rotations.load(RELAXED), 0);
        s.opened -= Duration::from_secs(2);
        s.tick();
        assert_eq!(c.rotations.load(RELAXED), 1);
        assert!(numbered(&p, 1).exists());
        s.close();
    }
}
