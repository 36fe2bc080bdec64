//! Bounded spill for network sinks: lines queued while the peer is unreachable, replayed in
//! order on reconnect. On disk (segment files, survives a restart) or in memory.
//!
//! Records carry command lines and paths: the directory is kept at 0700 and segments at 0600,
//! whatever the umask or an earlier version left.

use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{self, BufRead, BufReader, Write},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::PathBuf,
};

/// Segment size: small enough that a replayed segment is deleted soon after it is sent.
const SEGMENT: u64 = 1 << 20;

pub enum Spill {
    Memory {
        lines: VecDeque<Vec<u8>>,
        bytes: u64,
        max: u64,
    },
    Disk(DiskSpill),
}

pub struct DiskSpill {
    dir: PathBuf,
    max: u64,
    bytes: u64,
    /// (id, size) oldest first.
    segs: VecDeque<(u64, u64)>,
    writer: Option<File>,
    reader: Option<(u64, BufReader<File>)>,
    /// A line read from the oldest segment and not yet popped.
    pending: Option<Vec<u8>>,
}

impl Spill {
    pub fn memory(max: u64) -> Self {
        Spill::Memory {
            lines: VecDeque::new(),
            bytes: 0,
            max,
        }
    }

    /// Open (and adopt what an earlier run left in) `dir`.
    pub fn disk(dir: PathBuf, max: u64) -> io::Result<Self> {
        fs::create_dir_all(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        let mut segs = Vec::new();
        for e in fs::read_dir(&dir)? {
            let e = e?;
            let name = e.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let m = e.metadata()?;
            if m.permissions().mode() & 0o077 != 0 {
                fs::set_permissions(e.path(), fs::Permissions::from_mode(0o600))?;
            }
            segs.push((id, m.len()));
        }
        segs.sort();
        let bytes = segs.iter().map(|s| s.1).sum();
        Ok(Spill::Disk(DiskSpill {
            dir,
            max,
            bytes,
            segs: segs.into(),
            writer: None,
            reader: None,
            pending: None,
        }))
    }

    pub fn bytes(&self) -> u64 {
        match self {
            Spill::Memory { bytes, .. } => *bytes,
            Spill::Disk(d) => d.bytes,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.bytes() == 0
    }

    /// Queue one line (with its `\n`). `Ok(false)`: the bound is reached, the line is not kept.
    pub fn push(&mut self, line: &[u8]) -> io::Result<bool> {
        match self {
            Spill::Memory { lines, bytes, max } => {
                if *bytes + line.len() as u64 > *max {
                    return Ok(false);
                }
                *bytes += line.len() as u64;
                lines.push_back(line.to_vec());
                Ok(true)
            }
            Spill::Disk(d) => d.push(line),
        }
    }

    /// The oldest line, without removing it.
    pub fn peek(&mut self) -> io::Result<Option<Vec<u8>>> {
        match self {
            Spill::Memory { lines, .. } => Ok(lines.front().cloned()),
            Spill::Disk(d) => d.peek(),
        }
    }

    /// At shutdown, with `left` the lines a sink could not get confirmed: a disk spill keeps
    /// them for the next run (which may deliver some twice); from a memory spill they are lost,
    /// with what it still holds: that count is returned.
    pub fn shutdown(&mut self, left: Vec<Vec<u8>>) -> (u64, u64) {
        let mut kept_errors = 0;
        match self {
            Spill::Disk(_) => {
                let mut lost = 0;
                for l in &left {
                    match self.push(l) {
                        Ok(true) => {}
                        Ok(false) => lost += 1,
                        Err(_) => kept_errors += 1,
                    }
                }
                (lost, kept_errors)
            }
            Spill::Memory { lines, .. } => ((lines.len() + left.len()) as u64, 0),
        }
    }

    /// Remove the line `peek` returned.
    pub fn pop(&mut self) {
        match self {
            Spill::Memory { lines, bytes, .. } => {
                if let Some(l) = lines.pop_front() {
                    *bytes -= l.len() as u64;
                }
            }
            Spill::Disk(d) => {
                if let Some(l) = d.pending.take() {
                    d.bytes = d.bytes.saturating_sub(l.len() as u64);
                }
            }
        }
    }
}

impl DiskSpill {
    fn seg_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:012}.seg"))
    }

    fn push(&mut self, line: &[u8]) -> io::Result<bool> {
        if self.bytes + line.len() as u64 > self.max {
            return Ok(false);
        }
        let need_new = match self.segs.back() {
            None => true,
            Some(&(_, size)) => size >= SEGMENT || self.writer.is_none(),
        };
        if need_new {
            let id = self.segs.back().map(|s| s.0 + 1).unwrap_or(0);
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(self.seg_path(id))?;
            self.writer = Some(f);
            self.segs.push_back((id, 0));
        }
        if let (Some(w), Some(last)) = (&mut self.writer, self.segs.back_mut()) {
            w.write_all(line)?;
            last.1 += line.len() as u64;
            self.bytes += line.len() as u64;
        }
        Ok(true)
    }

    fn peek(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(p) = &self.pending {
                return Ok(Some(p.clone()));
            }
            let Some(&(id, _)) = self.segs.front() else {
                self.bytes = 0;
                return Ok(None);
            };
            if self.reader.as_ref().is_none_or(|r| r.0 != id) {
                self.reader = Some((id, BufReader::new(File::open(self.seg_path(id))?)));
            }
            let mut line = Vec::new();
            if let Some((_, r)) = &mut self.reader {
                r.read_until(b'\n', &mut line)?;
            }
            if line.ends_with(b"\n") {
                self.pending = Some(line);
                continue;
            }
            // End of this segment (a partial line is the tail of a crash: dropped).
            let is_writing = self.segs.len() == 1 && self.writer.is_some();
            self.reader = None;
            self.segs.pop_front();
            if is_writing {
                self.writer = None;
            }
            fs::remove_file(self.seg_path(id))?;
            self.bytes = self.segs.iter().map(|s| s.1).sum::<u64>();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(s: &mut Spill) -> Vec<Vec<u8>> {
        let mut out = vec![];
        while let Some(l) = s.peek().unwrap() {
            out.push(l);
            s.pop();
        }
        out
    }

    #[test]
    fn disk_spill_is_ordered_bounded_and_survives_reopen() {
        let tmp = crate::testutil::TmpDir::new("spill");
        let dir = tmp.path("spill");
        let mut s = Spill::disk(dir.clone(), 100).unwrap();
        for i in 0..20 {
            let ok = s.push(format!("line{i:02}\n").as_bytes()).unwrap();
            assert_eq!(ok, i < 14, "{i}"); // 7 bytes a line, 100 bytes bound
        }
        drop(s);
        let mut s = Spill::disk(dir.clone(), 100).unwrap();
        assert_eq!(s.bytes(), 98);
        assert_eq!(s.peek().unwrap().unwrap(), b"line00\n");
        s.pop();
        s.push(b"late\n").unwrap();
        let got = drain(&mut s);
        assert_eq!(got.len(), 14);
        assert_eq!(got[0], b"line01\n");
        assert_eq!(got[13], b"late\n");
        assert!(s.is_empty());
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[test]
    fn spill_is_private_whatever_an_old_run_left() {
        let tmp = crate::testutil::TmpDir::new("spill-mode");
        let dir = tmp.path("spill");
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        // A segment an older version left world-readable.
        let old = dir.join("000000000000.seg");
        fs::write(&old, "old\n").unwrap();
        fs::set_permissions(&old, fs::Permissions::from_mode(0o644)).unwrap();
        let mut s = Spill::disk(dir.clone(), 1 << 20).unwrap();
        assert_eq!(s.peek().unwrap().unwrap(), b"old\n");
        s.pop();
        s.push(b"new\n").unwrap();
        let mode = |p: &std::path::Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        for e in fs::read_dir(&dir).unwrap() {
            assert_eq!(mode(&e.unwrap().path()), 0o600);
        }
    }
}
