//! Stdout sink: records as lines; on a terminal with the tail format, a one-line status
//! (events/s, alerts, lost, hooks) kept at the bottom and redrawn in place, so it never
//! scrolls the alerts away.

use std::{
    io::{self, BufWriter, Write},
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    config::Format,
    counters::{Cause, SinkCounters, RELAXED},
    render::render,
    tail,
    writer::SinkWriter,
};
use crate::{metrics::Registry, record::Record};

pub struct StdoutSink {
    format: Format,
    colour: bool,
    host: String,
    out: BufWriter<Box<dyn Write + Send>>,
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
        Self::with_writer(
            Box::new(io::stdout()),
            format,
            colour,
            tty,
            host,
            registry,
            counters,
        )
    }

    /// As `new`, writing to `w` (tests look at the exact bytes a terminal would get).
    pub(crate) fn with_writer(
        w: Box<dyn Write + Send>,
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
            out: BufWriter::with_capacity(64 * 1024, w),
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::{
        record::{Severity, StateRecord},
        sink::{fixtures, tail::CLEAR_LINE},
    };

    /// What the terminal received.
    #[derive(Clone, Default)]
    struct Screen(Arc<Mutex<Vec<u8>>>);
    impl Write for Screen {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Screen {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn sink(tty: bool) -> (StdoutSink, Screen, Arc<Registry>) {
        let screen = Screen::default();
        let reg = Arc::new(Registry::default());
        reg.observe(&Record::State(StateRecord {
            action: "started",
            detail: serde_json::json!({"hooks_attached": 1, "hooks_total": 2}),
        }));
        let s = StdoutSink::with_writer(
            Box::new(screen.clone()),
            Format::Tail,
            false,
            tty,
            "h".into(),
            reg.clone(),
            Arc::new(SinkCounters::new(
                "stdout".into(),
                "stdout",
                Format::Tail.as_str(),
            )),
        );
        (s, screen, reg)
    }

    /// The status line is wiped before every record and redrawn after it, never followed by
    /// a newline: records scroll, the status stays on the bottom line and never pushes an
    /// alert off screen or lands in the scrollback.
    #[test]
    fn golden_terminal_stream_keeps_the_status_below_the_records() {
        let (mut s, screen, reg) = sink(true);
        let alert = fixtures::alert(3, Severity::High);
        let event = Record::Event(fixtures::event(4));
        reg.observe(&alert);
        s.write(&alert);
        s.idle();
        reg.observe(&event);
        s.write(&event);
        s.idle();
        s.close();
        let status = |events: u64| {
            tail::status_text(
                &crate::metrics::Snapshot {
                    events,
                    alerts: 1,
                    alerts_high: 1,
                    hooks_attached: 1,
                    hooks_total: 2,
                    ..Default::default()
                },
                0.0,
            )
        };
        let want = format!(
            "{a}\n{CLEAR_LINE}{s0}{CLEAR_LINE}{e}\n{CLEAR_LINE}{s1}{CLEAR_LINE}",
            a = tail::render(&alert, false).unwrap(),
            e = tail::render(&event, false).unwrap(),
            s0 = status(0),
            s1 = status(1),
        );
        assert_eq!(screen.text(), want);
        assert!(status(0).contains("0.0 ev/s · 1 alerts (1 high+) · 0 lost · 1/2 hooks"));
    }

    #[test]
    fn a_pipe_gets_records_only() {
        let (mut s, screen, _) = sink(false);
        s.write(&fixtures::alert(3, Severity::High));
        s.idle();
        s.tick();
        s.close();
        let t = screen.text();
        assert!(t.starts_with("! HIGH SM001") && t.ends_with('\n'), "{t:?}");
        assert!(!t.contains(CLEAR_LINE) && !t.contains("ev/s"), "{t:?}");
    }
}
