//! File sink: appends records, rotates by size or age (`PATH.1` … `PATH.N`), reopens on
//! request (logrotate's SIGHUP), flushes and fsyncs by policy, and keeps the hash chain.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    chain::{self, Chain},
    config::{SinkConfig, SyncPolicy},
    render, Cause, Format, SinkCounters, SinkWriter,
};
use crate::record::Record;

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
    out: Option<BufWriter<File>>,
    size: u64,
    opened: Instant,
    last_sync: Instant,
    dirty: bool,
    chain: Option<Chain>,
    counters: Arc<SinkCounters>,
}

fn open_append(p: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(p)
}

fn numbered(p: &Path, n: u64) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
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
        let chain = if chained {
            let key = match &o.key_file {
                Some(k) => Some(chain::load_key(k).map_err(io::Error::other)?),
                None => None,
            };
            // Continue the chain the previous run (or the rotated file) left off.
            let prev = [path.clone(), numbered(&path, 1)]
                .iter()
                .find(|p| fs::metadata(p).is_ok_and(|m| m.len() > 0))
                .and_then(|p| chain::tail_link(p).ok().flatten());
            let (seq, hash) = prev
                .map(|l| (l.seq + 1, l.hash))
                .unwrap_or((0, chain::ZERO));
            Some(Chain::new(key, o.checkpoint_every.unwrap_or(1000), seq, hash).with_format(format))
        } else {
            None
        };
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
            out: None,
            size: 0,
            opened: Instant::now(),
            last_sync: Instant::now(),
            dirty: false,
            chain,
            counters,
        };
        s.open_current()?;
        Ok(s)
    }

    fn open_current(&mut self) -> io::Result<()> {
        let f = open_append(&self.path)?;
        self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
        self.opened = Instant::now();
        self.out = Some(BufWriter::with_capacity(64 * 1024, f));
        if let Some(c) = &mut self.chain {
            let h = c.header(&self.host, &self.path);
            self.put(&h)?;
        }
        self.counters.set_state("open");
        Ok(())
    }

    fn put(&mut self, line: &[u8]) -> io::Result<()> {
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| io::Error::other("file not open"))?;
        out.write_all(line)?;
        self.size += line.len() as u64;
        self.dirty = true;
        Ok(())
    }

    fn sync(&mut self, fsync: bool) -> io::Result<()> {
        if let Some(out) = &mut self.out {
            out.flush()?;
            if fsync {
                out.get_ref().sync_data()?;
            }
        }
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Footer, flush and fsync, then let go of the file.
    fn close_current(&mut self, reason: &str) -> io::Result<()> {
        if self.out.is_none() {
            return Ok(());
        }
        if let Some(c) = &mut self.chain {
            let f = c.footer(&self.host, reason);
            self.put(&f)?;
        }
        let r = self.sync(self.fsync != SyncPolicy::Never);
        self.out = None;
        r
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
        self.counters.rotations.fetch_add(1, super::RELAXED);
        self.open_current()
    }

    fn due_rotation(&self, next: usize) -> bool {
        if self.size == 0 {
            return false;
        }
        self.rotate_size
            .is_some_and(|m| self.size + next as u64 > m)
            || self
                .rotate_every
                .is_some_and(|d| self.opened.elapsed() >= d)
    }

    fn write_inner(&mut self, r: &Record) -> io::Result<()> {
        if self.out.is_none() {
            // A failed reopen or rotation: try again before every record.
            self.open_current()?;
        }
        let mut body = render(self.format, r, &self.host, self.colour);
        // Rotate before sealing so the record's chain seq lands after the new header.
        let chain_len = if self.chain.is_some() { 180 } else { 1 };
        if self.due_rotation(body.len() + chain_len) {
            self.rotate()?;
        }
        let line = match &mut self.chain {
            Some(c) => c.seal_owned(body),
            None => {
                body.push(b'\n');
                body
            }
        };
        self.put(&line)?;
        if self.chain.as_ref().is_some_and(Chain::checkpoint_due) {
            if let Some(c) = &mut self.chain {
                let cp = c.checkpoint(&self.host);
                self.put(&cp)?;
            }
        }
        match (self.flush, self.fsync) {
            (_, SyncPolicy::Record) => self.sync(true)?,
            (SyncPolicy::Record, _) => self.sync(false)?,
            _ => {}
        }
        Ok(())
    }
}

impl SinkWriter for FileSink {
    fn write(&mut self, r: &Record) {
        match self.write_inner(r) {
            Ok(()) => self.counters.written.fetch_add(1, super::RELAXED),
            Err(e) => {
                self.counters.set_state(&format!("error: {e}"));
                self.counters.lose(Cause::WriteError, 1);
                // The chain already advanced past the lost record; a later verify shows the
                // gap as a removal, which is what happened.
                self.out = None;
                0
            }
        };
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
        if self.out.is_some() && self.rotate_every.is_some() && self.due_rotation(0) {
            if let Err(e) = self.rotate() {
                self.counters.set_state(&format!("error: {e}"));
            }
        }
    }

    fn reopen(&mut self) {
        let r = self
            .close_current("reopen")
            .and_then(|_| self.open_current());
        if let Err(e) = r {
            self.counters.set_state(&format!("error: {e}"));
        }
    }

    fn close(&mut self) {
        let _ = self.close_current("shutdown");
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
        let counters = Arc::new(SinkCounters::new(c.name(), "file", Format::Json));
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
        assert_eq!(c.written.load(crate::sink::RELAXED), 40);
        assert!(c.rotations.load(crate::sink::RELAXED) >= 3);
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
        // flush=never: nothing reached the file yet (64 KiB buffer).
        assert_eq!(fs::metadata(&p).unwrap().len(), 0);
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
        let rep = verify(&[p.clone()], None, false).unwrap();
        assert!(rep.findings.is_empty(), "{:#?}", rep.findings);
        assert_eq!(rep.first_seq, Some(0));
    }

    #[test]
    fn time_rotation_on_tick() {
        let d = tempdir("trot");
        let p = d.join("s.jsonl");
        let (mut s, c) = sink(&format!("file:{},rotate_interval=1s", p.display()));
        s.write(&Record::Event(fixtures::event(0)));
        s.tick();
        assert_eq!(c.rotations.load(crate::sink::RELAXED), 0);
        s.opened -= Duration::from_secs(2);
        s.tick();
        assert_eq!(c.rotations.load(crate::sink::RELAXED), 1);
        assert!(numbered(&p, 1).exists());
        s.close();
    }
}
