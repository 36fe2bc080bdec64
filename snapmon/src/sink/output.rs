//! One synchronous output, for offline tools (`replay`); the agent uses [`super::SinkSet`].

use std::io::{self, BufWriter, Write};

use super::{config::Format, filter::Filter, json, render::render, tail};
use crate::record::Record;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SinkStats {
    pub received: u64,
    pub written: u64,
    pub filtered: u64,
    pub dropped: u64,
}

/// One synchronous output (offline tools such as `replay`; the agent uses [`SinkSet`]).
pub struct Output {
    pub format: Format,
    pub colour: bool,
    pub filter: Filter,
    pub writer: BufWriter<Box<dyn Write + Send>>,
    pub stats: SinkStats,
}

/// A write failed because the reader went away: stop quietly (ripgrep's rule).
#[derive(Debug, thiserror::Error)]
#[error("output closed")]
pub struct BrokenPipe;

impl Output {
    pub fn new(
        _name: impl Into<String>,
        format: Format,
        colour: bool,
        filter: Filter,
        w: Box<dyn Write + Send>,
    ) -> Self {
        Output {
            format,
            colour,
            filter,
            writer: BufWriter::new(w),
            stats: SinkStats::default(),
        }
    }

    pub fn emit(&mut self, r: &Record, host: &str) -> Result<(), BrokenPipe> {
        self.stats.received += 1;
        if !self.filter.accepts(r) {
            self.stats.filtered += 1;
            return Ok(());
        }
        let res = match self.format {
            Format::Json => json::write_line(&mut self.writer, r, host),
            Format::Tail => tail::write_line(&mut self.writer, r, self.colour),
            Format::Ocsf => {
                let mut b = render(Format::Ocsf, r, host, false);
                b.push(b'\n');
                self.writer.write_all(&b)
            }
        };
        self.account(res)
    }

    fn account(&mut self, res: io::Result<()>) -> Result<(), BrokenPipe> {
        match res {
            Ok(()) => {
                self.stats.written += 1;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(BrokenPipe),
            Err(_) => {
                self.stats.dropped += 1;
                Ok(())
            }
        }
    }

    pub fn flush(&mut self) -> Result<(), BrokenPipe> {
        match self.writer.flush() {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(BrokenPipe),
            _ => Ok(()),
        }
    }
}
