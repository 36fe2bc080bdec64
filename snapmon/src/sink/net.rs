//! Stream sinks (Unix socket, TCP, syslog over TCP): newline-delimited or octet-counted
//! records, reconnect with exponential backoff, and a bounded spill replayed in order.
//!
//! Plain NDJSON has no acknowledgements, so the sink checks before every write whether the
//! peer has closed its end (a killed collector) and spills instead of writing into a dead
//! socket. What the peer had received but not yet read when it died is outside our reach.

use std::{
    io::{self, Write},
    net::{TcpStream, ToSocketAddrs},
    os::{fd::AsRawFd, unix::net::UnixStream},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{config::SinkConfig, spill::Spill, Cause, SinkCounters, SinkWriter};
use crate::record::Record;

pub enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `payload\n` (Vector, Fluent Bit, Logstash json_lines).
    Newline,
    /// `LEN SP payload` (RFC 6587 octet counting for syslog over TCP).
    OctetCount,
}

enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    fn fd(&self) -> i32 {
        match self {
            Conn::Unix(s) => s.as_raw_fd(),
            Conn::Tcp(s) => s.as_raw_fd(),
        }
    }
    fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.write_all(b),
            Conn::Tcp(s) => s.write_all(b),
        }
    }
    /// The peer hung up (or reset): writing now would lose the record on TCP.
    fn peer_gone(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.fd(),
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        if n <= 0 {
            return false;
        }
        if p.revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) != 0 {
            return true;
        }
        // Readable: the peer sent something (ignored) or EOF.
        let mut buf = [0u8; 512];
        // SAFETY: reading into a local buffer of the stated length.
        let r = unsafe {
            libc::recv(
                self.fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        r == 0
            || (r < 0
                && io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock
                && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted)
    }
}

pub struct NetSink {
    endpoint: Endpoint,
    framing: Framing,
    /// Turns a record into one payload (no trailing newline).
    render: Box<dyn FnMut(&Record) -> Vec<u8> + Send>,
    conn: Option<Conn>,
    spill: Spill,
    backoff_min: Duration,
    backoff_max: Duration,
    backoff: Duration,
    next_attempt: Instant,
    write_timeout: Duration,
    counters: Arc<SinkCounters>,
}

impl NetSink {
    pub fn new(
        c: &SinkConfig,
        endpoint: Endpoint,
        framing: Framing,
        render: Box<dyn FnMut(&Record) -> Vec<u8> + Send>,
        counters: Arc<SinkCounters>,
    ) -> io::Result<Self> {
        let o = c.options();
        let max = o.spill_size.unwrap_or(64 << 20);
        let spill = match &o.spill_dir {
            Some(d) => Spill::disk(d.clone(), max)?,
            None => Spill::memory(max),
        };
        let backoff_min = Duration::from_millis(o.backoff_min.unwrap_or(100).max(1));
        let mut s = NetSink {
            endpoint,
            framing,
            render,
            conn: None,
            spill,
            backoff_min,
            backoff_max: Duration::from_millis(o.backoff_max.unwrap_or(30_000)).max(backoff_min),
            backoff: backoff_min,
            next_attempt: Instant::now(),
            write_timeout: Duration::from_millis(o.write_timeout.unwrap_or(5000).max(1)),
            counters,
        };
        s.counters
            .spill_bytes
            .store(s.spill.bytes(), super::RELAXED);
        s.pump();
        Ok(s)
    }

    fn connect(&self) -> io::Result<Conn> {
        match &self.endpoint {
            Endpoint::Unix(p) => {
                let s = UnixStream::connect(p)?;
                s.set_write_timeout(Some(self.write_timeout))?;
                Ok(Conn::Unix(s))
            }
            Endpoint::Tcp(a) => {
                let mut last = io::Error::other(format!("{a}: no address"));
                for addr in a.to_socket_addrs()? {
                    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                        Ok(s) => {
                            s.set_write_timeout(Some(self.write_timeout))?;
                            let _ = s.set_nodelay(true);
                            return Ok(Conn::Tcp(s));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
        }
    }

    fn frame(&self, line: &[u8]) -> Vec<u8> {
        let payload = line.strip_suffix(b"\n").unwrap_or(line);
        match self.framing {
            Framing::Newline => line.to_vec(),
            Framing::OctetCount => {
                let mut f = format!("{} ", payload.len()).into_bytes();
                f.extend_from_slice(payload);
                f
            }
        }
    }

    /// Send one spill-format line (with `\n`) now, or report why not.
    fn send(&mut self, line: &[u8]) -> io::Result<()> {
        let framed = self.frame(line);
        let Some(c) = &mut self.conn else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        if c.peer_gone() {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        c.write_all(&framed)
    }

    fn disconnected(&mut self, e: &io::Error) {
        self.conn = None;
        self.counters.set_state(&format!("disconnected: {e}"));
        self.counters.disconnects.fetch_add(1, super::RELAXED);
        self.next_attempt = Instant::now() + self.backoff;
    }

    fn spill(&mut self, line: &[u8]) {
        match self.spill.push(line) {
            Ok(true) => {}
            Ok(false) => self.counters.lose(Cause::SpillFull, 1),
            Err(_) => self.counters.lose(Cause::SpillError, 1),
        }
        self.counters
            .spill_bytes
            .store(self.spill.bytes(), super::RELAXED);
    }

    /// Reconnect when due, then replay a bounded batch of the spill (oldest first).
    fn pump(&mut self) {
        if self.conn.is_none() && Instant::now() >= self.next_attempt {
            match self.connect() {
                Ok(c) => {
                    self.conn = Some(c);
                    self.backoff = self.backoff_min;
                    self.counters.set_state("connected");
                }
                Err(e) => {
                    self.counters.set_state(&format!("connecting: {e}"));
                    self.next_attempt = Instant::now() + self.backoff;
                    self.backoff = (self.backoff * 2).min(self.backoff_max);
                    return;
                }
            }
        }
        if self.conn.is_none() {
            return;
        }
        // Bounded so fresh records keep flowing into the spill behind the replay.
        for _ in 0..4096 {
            let line = match self.spill.peek() {
                Ok(Some(l)) => l,
                Ok(None) => break,
                Err(_) => {
                    // An unreadable spill segment: count it once and move on.
                    self.spill.pop();
                    self.counters.lose(Cause::SpillError, 1);
                    continue;
                }
            };
            match self.send(&line) {
                Ok(()) => {
                    self.spill.pop();
                    self.counters.written.fetch_add(1, super::RELAXED);
                }
                Err(e) => {
                    self.disconnected(&e);
                    break;
                }
            }
        }
        self.counters
            .spill_bytes
            .store(self.spill.bytes(), super::RELAXED);
    }
}

impl SinkWriter for NetSink {
    fn write(&mut self, r: &Record) {
        let mut line = (self.render)(r);
        line.push(b'\n');
        self.pump();
        if self.conn.is_some() && self.spill.is_empty() {
            match self.send(&line) {
                Ok(()) => {
                    self.counters.written.fetch_add(1, super::RELAXED);
                    return;
                }
                Err(e) => self.disconnected(&e),
            }
        }
        self.spill(&line);
    }

    fn tick(&mut self) {
        self.pump();
    }

    fn reopen(&mut self) {
        // Reconnect: a collector that was restarted behind a load balancer, for example.
        self.conn = None;
        self.next_attempt = Instant::now();
        self.pump();
    }

    fn close(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.conn.is_some() && !self.spill.is_empty() && Instant::now() < deadline {
            self.pump();
        }
        // A disk spill stays for the next run; a memory spill is lost: count it.
        if let Spill::Memory { lines, .. } = &self.spill {
            if !lines.is_empty() {
                self.counters.lose(Cause::Shutdown, lines.len() as u64);
            }
        }
        self.conn = None;
        self.counters.set_state("closed");
    }

    fn backlog(&self) -> bool {
        !self.spill.is_empty() && self.conn.is_some()
    }
}

#[cfg(test)]
mod tests {
    use crate::sink::{config::SinkConfig, fixtures, SinkSet};
    use std::{
        io::{BufRead, BufReader, Read},
        net::TcpListener,
        os::unix::net::UnixListener,
        thread,
        time::{Duration, Instant},
    };

    use super::*;

    /// Accept one connection and read `n` lines, then hang up (the "kill").
    fn consume<S: Read + Send + 'static>(
        accept: impl FnOnce() -> S + Send + 'static,
        n: usize,
    ) -> thread::JoinHandle<Vec<u64>> {
        thread::spawn(move || {
            let s = accept();
            let mut r = BufReader::new(s);
            let mut seqs = Vec::new();
            let mut line = String::new();
            while seqs.len() < n {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let v: serde_json::Value = serde_json::from_str(&line).expect("whole JSON lines");
                seqs.push(v["event"]["sequence"].as_u64().unwrap());
            }
            seqs
        })
    }

    fn wait_for(set: &SinkSet, name: &str, what: impl Fn(&serde_json::Value) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !what(&set.stats()[name]) {
            assert!(Instant::now() < deadline, "{}", set.stats());
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn send(set: &SinkSet, r: std::ops::Range<u64>) {
        for i in r {
            set.send(&Record::Event(fixtures::event(i))).unwrap();
        }
    }

    /// Collector killed after 50 records; 100 more arrive while it is down (spilled);
    /// it comes back and must see all 200, in order, none twice.
    fn kill_and_restart(
        spec: &str,
        name: &str,
        listen: &dyn Fn() -> Box<dyn FnOnce() -> Box<dyn Read + Send> + Send>,
    ) {
        let a = consume(listen(), 50);
        let mut set = SinkSet::start(&[SinkConfig::parse_spec(spec).unwrap()], "h".into()).unwrap();
        wait_for(&set, name, |s| s["state"] == "connected");
        send(&set, 0..50);
        let first = a.join().unwrap();
        assert_eq!(first, (0..50).collect::<Vec<_>>());
        send(&set, 50..150);
        wait_for(&set, name, |s| {
            s["spill_bytes"].as_u64().unwrap() > 0 && s["written"] == 50 && s["queued"] == 0
        });
        let b = consume(listen(), 150);
        send(&set, 150..200);
        let second = b.join().unwrap();
        assert_eq!(second, (50..200).collect::<Vec<_>>());
        wait_for(&set, name, |s| s["written"] == 200 && s["spill_bytes"] == 0);
        set.shutdown(Duration::from_secs(5));
        let st = &set.stats()[name];
        assert_eq!(st["dropped"], 0, "{st}");
        assert!(st["disconnects"].as_u64().unwrap() >= 1);
    }

    #[test]
    fn unix_socket_collector_killed_mid_stream_loses_nothing() {
        let d = crate::testutil::TmpDir::new("unix");
        let sock = d.join("collector.sock");
        let spec = format!(
            "unix:{},spill_dir={},backoff_min=5ms,backoff_max=20ms",
            sock.display(),
            d.join("spill").display()
        );
        let s2 = sock.clone();
        kill_and_restart(&spec, &format!("unix:{}", sock.display()), &move || {
            let _ = std::fs::remove_file(&s2);
            let l = UnixListener::bind(&s2).unwrap();
            let s3 = s2.clone();
            Box::new(move || {
                let (s, _) = l.accept().unwrap();
                // The listener dies with the collector: reconnects fail until restart.
                drop(l);
                let _ = std::fs::remove_file(&s3);
                Box::new(s) as Box<dyn Read + Send>
            })
        });
        // The disk spill is drained and its segments deleted.
        assert_eq!(std::fs::read_dir(d.join("spill")).unwrap().count(), 0);
    }

    #[test]
    fn tcp_collector_killed_mid_stream_loses_nothing() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let spec = format!("tcp:{addr},backoff_min=5ms,backoff_max=20ms");
        let a2 = addr.clone();
        kill_and_restart(&spec, &format!("tcp:{addr}"), &move || {
            let l = TcpListener::bind(&a2).unwrap();
            Box::new(move || {
                let (s, _) = l.accept().unwrap();
                drop(l);
                Box::new(s) as Box<dyn Read + Send>
            })
        });
    }

    #[test]
    fn spill_bound_counts_what_it_drops() {
        // Nobody listens: everything goes to a 2 KiB memory spill.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let spec = format!("tcp:127.0.0.1:{port},spill_size=2K,backoff_min=1s");
        let name = format!("tcp:127.0.0.1:{port}");
        let mut set =
            SinkSet::start(&[SinkConfig::parse_spec(&spec).unwrap()], "h".into()).unwrap();
        send(&set, 0..20);
        wait_for(&set, &name, |s| s["queued"] == 0 && s["received"] == 20);
        let st = set.stats()[&name].clone();
        let spilled = st["spill_bytes"].as_u64().unwrap();
        assert!(spilled > 0 && spilled <= 2048, "{st}");
        let dropped = st["dropped_by_cause"]["spill_full"].as_u64().unwrap();
        assert!(dropped >= 15, "{st}");
        let drops = set.take_drops();
        assert_eq!(drops, vec![(name.clone(), "spill_full", dropped)]);
        set.shutdown(Duration::from_secs(3));
        // The memory spill could not be delivered: counted at shutdown.
        assert!(
            set.stats()[&name]["dropped_by_cause"]["shutdown"]
                .as_u64()
                .unwrap()
                > 0
        );
    }
}
