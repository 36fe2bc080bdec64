//! Stdout sink: records as lines; on a terminal with the tail format, a one-line status
//! (events/s, alerts, lost, hooks) kept at the bottom and redrawn in place, so it never
//! scrolls the alerts away.

use super::*;

pub struct StdoutSink {
    format: Format,
    colour: bool,
    host: String,
    out: BufWriter<io::Stdout>,
    /// Status line on the terminal: the registry it reads and what it last showed.
    status: Option<tail::Status>,
    registry: Arc<Registry>,
    status_drawn: bool,
    last_status: Instant,
    counters: Arc<SinkCounters>,
    last_flush: Instant,
    tty: bool,
}

impl StdoutSink {
    pub fn new(
        format: Format,
        colour: bool,
        tty: bool,
        host: String,
        registry: Arc<Registry>,
        counters: Arc<SinkCounters>,
    ) -> Self {
        counters.set_state("open");
        StdoutSink {
            format,
            colour,
            host,
            out: BufWriter::with_capacity(64 * 1024, io::stdout()),
            status: (tty && format == Format::Tail).then(tail::Status::default),
            registry,
            status_drawn: false,
            last_status: Instant::now(),
            counters,
            last_flush: Instant::now(),
            tty,
        }
    }

    fn io(&mut self, r: io::Result<()>) -> bool {
        match r {
            Ok(()) => true,
            Err(e) => {
                if e.kind() == io::ErrorKind::BrokenPipe {
                    self.counters.closed.store(true, RELAXED);
                    self.counters.set_state("closed by reader");
                } else {
                    self.counters.set_state(&format!("error: {e}"));
                }
                false
            }
        }
    }

    fn draw_status(&mut self) {
        let Some(st) = &mut self.status else { return };
        let line = st.line(&self.registry.snapshot(), Instant::now());
        let r = write!(self.out, "{}{}", tail::CLEAR_LINE, line).and_then(|_| self.out.flush());
        self.status_drawn = true;
        self.last_status = Instant::now();
        self.io(r);
    }
}

impl SinkWriter for StdoutSink {
    fn write(&mut self, r: &Record) {
        if self.counters.closed.load(RELAXED) {
            self.counters.lose(Cause::WriteError, 1);
            return;
        }
        let mut b = Vec::with_capacity(512);
        if self.status_drawn {
            // Wipe the status line; the record takes its place and it is redrawn below.
            b.extend_from_slice(tail::CLEAR_LINE.as_bytes());
            self.status_drawn = false;
        }
        b.extend_from_slice(&render(self.format, r, &self.host, self.colour));
        b.push(b'\n');
        let res = self.out.write_all(&b);
        if self.io(res) {
            self.counters.written.fetch_add(1, RELAXED);
        } else {
            self.counters.lose(Cause::WriteError, 1);
        }
    }

    fn idle(&mut self) {
        // A terminal sees each batch at once; a pipe gets 64 KiB writes or a flush per tick.
        if self.tty || self.last_flush.elapsed() >= Duration::from_millis(200) {
            let r = self.out.flush();
            self.io(r);
            self.last_flush = Instant::now();
        }
        if self.status.is_some() {
            self.draw_status();
        }
    }

    fn tick(&mut self) {
        let r = self.out.flush();
        self.io(r);
        self.last_flush = Instant::now();
        if self.status.is_some() && self.last_status.elapsed() >= Duration::from_secs(1) {
            self.draw_status();
        }
    }

    fn reopen(&mut self) {}

    fn close(&mut self) {
        if self.status_drawn {
            let _ = self.out.write_all(tail::CLEAR_LINE.as_bytes());
        }
        let r = self.out.flush();
        self.io(r);
    }
}
