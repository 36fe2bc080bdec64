//! Stream sinks (Unix socket, TCP, syslog over TCP): newline-delimited or octet-counted
//! records, reconnect with exponential backoff, and a bounded spill replayed in order.
//!
//! A record counts as written only once the peer has it, and what a dead connection had not
//! confirmed is sent again after the reconnect (at least once; the record id tells copies
//! apart):
//! - plain mode: confirmed by the transport: TCP acknowledged it (the unacknowledged bytes in
//!   the send queue, `TIOCOUTQ`), or, on a Unix socket, the collector read it. Bytes TCP
//!   acknowledged but the collector had not read when it died are lost beyond anyone's
//!   knowing: at most the collector's socket receive buffer;
//! - `ack = true`: confirmed by the collector, which writes `ack N\n` back once it has stored
//!   the first N records of the connection (docs/output.md). Nothing is lost to a dying
//!   collector.
//!
//! Before every write the sink checks whether the peer hung up, so a killed collector does not
//! swallow the next record. A Unix socket must belong to root (or to the agent's own user):
//! anyone else could be impersonating the collector.

use std::{
    collections::VecDeque,
    io::{self, Write},
    net::{TcpStream, ToSocketAddrs},
    os::{
        fd::AsRawFd,
        unix::{fs::MetadataExt as _, net::UnixStream},
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    config::{SinkConfig, Unreachable},
    counters::{Cause, SinkCounters, RELAXED},
    render::RecordId,
    spill::Spill,
    writer::SinkWriter,
};
use crate::record::Record;

pub enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
            Endpoint::Tcp(a) => f.write_str(a),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `payload\n` (Vector, Fluent Bit, Logstash json_lines).
    Newline,
    /// `LEN SP payload` (RFC 6587 octet counting for syslog over TCP).
    OctetCount,
}

/// Refuse a socket someone other than root (or the agent's own user) could have put there.
pub fn check_socket_owner(p: &Path) -> io::Result<()> {
    let m = std::fs::metadata(p)?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if m.uid() != 0 && m.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is owned by uid {}, not root: refusing to send records to it (a local user could be posing as the collector)",
                p.display(),
                m.uid()
            ),
        ));
    }
    Ok(())
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
    /// Bytes written but not yet confirmed: not acknowledged by the peer's TCP, or (Unix)
    /// not yet read by the peer.
    fn unconfirmed_bytes(&self) -> io::Result<u64> {
        let mut n: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int.
        if unsafe { libc::ioctl(self.fd(), libc::TIOCOUTQ, &mut n) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n.max(0) as u64)
    }
    /// Read what the peer sent, without blocking: `Ok(None)` on EOF.
    fn read_available(&self, into: &mut Vec<u8>) -> io::Result<Option<usize>> {
        let mut buf = [0u8; 4096];
        let mut total = 0;
        loop {
            // SAFETY: reading into a local buffer of the stated length.
            let r = unsafe {
                libc::recv(
                    self.fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if r == 0 {
                return Ok(None);
            }
            if r < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(Some(total)),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            into.extend_from_slice(&buf[..r as usize]);
            total += r as usize;
        }
    }
    /// The peer hung up (or reset): writing now would lose the record on TCP. What it sent
    /// is discarded (plain mode has no replies).
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
        let mut sink = Vec::new();
        !matches!(self.read_available(&mut sink), Ok(Some(_)))
    }
}

/// A line sent on the current connection and not yet confirmed.
struct InFlight {
    /// Framed bytes written on this connection up to and including this line.
    end: u64,
    line: Vec<u8>,
}

/// Turns a record into one payload (no trailing newline).
pub type Render = Box<dyn FnMut(RecordId, &Record) -> Vec<u8> + Send>;

pub struct NetSink {
    endpoint: Endpoint,
    framing: Framing,
    /// Turns a record into one payload (no trailing newline).
    render: Render,
    conn: Option<Conn>,
    spill: Spill,
    /// What a dead connection had not confirmed: sent again before the spill.
    retry: VecDeque<Vec<u8>>,
    inflight: VecDeque<InFlight>,
    /// Framed bytes written on this connection.
    sent: u64,
    /// `ack = true`: the collector's acknowledgements, not the transport's, confirm.
    ack: bool,
    ack_window: usize,
    /// Records the collector acknowledged on this connection, and its partial reply line.
    acked: u64,
    replies: Vec<u8>,
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
        render: Render,
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
            retry: VecDeque::new(),
            inflight: VecDeque::new(),
            sent: 0,
            ack: o.ack == Some(true),
            ack_window: o.ack_window.unwrap_or(1024).max(1) as usize,
            acked: 0,
            replies: Vec::new(),
            backoff_min,
            backoff_max: Duration::from_millis(o.backoff_max.unwrap_or(30_000)).max(backoff_min),
            backoff: backoff_min,
            next_attempt: Instant::now(),
            write_timeout: Duration::from_millis(o.write_timeout.unwrap_or(5000).max(1)),
            counters,
        };
        s.counters.spill_bytes.store(s.spill.bytes(), RELAXED);
        if let Err(e) = s.pump() {
            match c.on_unreachable() {
                Unreachable::Fail => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot reach {}: {e} (on_unreachable = \"warn\" starts anyway, spilling)", s.endpoint),
                    ))
                }
                Unreachable::Warn => eprintln!(
                    "snapmon: WARNING: sink {}: cannot reach {}: {e}; records are spilled until it can (snapmon_sink_up 0)",
                    s.counters.name, s.endpoint
                ),
            }
        }
        Ok(s)
    }

    fn connect(&self) -> io::Result<Conn> {
        match &self.endpoint {
            Endpoint::Unix(p) => {
                check_socket_owner(p)?;
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

    /// Count what the peer confirmed since the last call. Errors mean the peer is gone or
    /// broke the protocol.
    fn confirm(&mut self) -> io::Result<()> {
        let Some(c) = &self.conn else {
            return Ok(());
        };
        let mut n = 0u64;
        if self.ack {
            if c.read_available(&mut self.replies)?.is_none() {
                return Err(io::ErrorKind::ConnectionReset.into());
            }
            while let Some(i) = self.replies.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.replies.drain(..=i).collect();
                let text = String::from_utf8_lossy(&line);
                let count = text
                    .trim_end()
                    .strip_prefix("ack ")
                    .and_then(|x| x.parse::<u64>().ok())
                    .ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("collector sent {:?}, not `ack N`", text.trim_end()),
                        )
                    })?;
                if count > self.acked {
                    n += count - self.acked;
                    self.acked = count;
                }
            }
            let n = n.min(self.inflight.len() as u64);
            self.inflight.drain(..n as usize);
            self.counters.written.fetch_add(n, RELAXED);
        } else {
            let done = self.sent.saturating_sub(c.unconfirmed_bytes()?);
            while self.inflight.front().is_some_and(|f| f.end <= done) {
                self.inflight.pop_front();
                n += 1;
            }
            self.counters.written.fetch_add(n, RELAXED);
        }
        Ok(())
    }

    /// Send one spill-format line (with `\n`) now, or report why not.
    fn send(&mut self, line: Vec<u8>) -> Result<(), (io::Error, Vec<u8>)> {
        if self.conn.is_none() {
            return Err((io::ErrorKind::NotConnected.into(), line));
        }
        if let Err(e) = self.confirm() {
            return Err((e, line));
        }
        if self.ack {
            // A full window waits for the collector, at most write_timeout.
            let deadline = Instant::now() + self.write_timeout;
            while self.inflight.len() >= self.ack_window {
                if Instant::now() >= deadline {
                    return Err((
                        io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("no acknowledgement within {:?}", self.write_timeout),
                        ),
                        line,
                    ));
                }
                std::thread::sleep(Duration::from_millis(1));
                if let Err(e) = self.confirm() {
                    return Err((e, line));
                }
            }
        }
        let framed = self.frame(&line);
        let Some(c) = &mut self.conn else {
            return Err((io::ErrorKind::NotConnected.into(), line));
        };
        if !self.ack && c.peer_gone() {
            return Err((io::ErrorKind::ConnectionReset.into(), line));
        }
        if let Err(e) = c.write_all(&framed) {
            return Err((e, line));
        }
        self.sent += framed.len() as u64;
        self.inflight.push_back(InFlight {
            end: self.sent,
            line,
        });
        Ok(())
    }

    /// The connection is gone: what it had not confirmed goes back in front of the spill.
    fn disconnected(&mut self, e: &io::Error) {
        self.conn = None;
        for f in self.inflight.drain(..).rev() {
            self.retry.push_front(f.line);
        }
        self.sent = 0;
        self.acked = 0;
        self.replies.clear();
        self.counters.set_state(&format!("disconnected: {e}"));
        self.counters.disconnects.fetch_add(1, RELAXED);
        self.next_attempt = Instant::now() + self.backoff;
    }

    fn spill(&mut self, line: &[u8]) {
        match self.spill.push(line) {
            Ok(true) => {}
            Ok(false) => self.counters.lose(Cause::SpillFull, 1),
            Err(_) => self.counters.lose(Cause::SpillError, 1),
        }
        self.counters.spill_bytes.store(self.spill.bytes(), RELAXED);
    }

    /// Reconnect when due, then resend what a dead connection left and replay a bounded
    /// batch of the spill (oldest first). Err: the peer could not be reached.
    fn pump(&mut self) -> io::Result<()> {
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
                    return Err(e);
                }
            }
        }
        if self.conn.is_none() {
            return Ok(());
        }
        if let Err(e) = self.confirm() {
            self.disconnected(&e);
            return Ok(());
        }
        while let Some(line) = self.retry.pop_front() {
            if let Err((e, line)) = self.send(line) {
                self.retry.push_front(line);
                self.disconnected(&e);
                return Ok(());
            }
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
            match self.send(line) {
                Ok(()) => self.spill.pop(),
                Err((e, _)) => {
                    self.disconnected(&e);
                    break;
                }
            }
        }
        self.counters.spill_bytes.store(self.spill.bytes(), RELAXED);
        Ok(())
    }

    /// Records not yet confirmed, in the retry queue or the spill.
    fn pending(&self) -> bool {
        !self.inflight.is_empty() || !self.retry.is_empty() || !self.spill.is_empty()
    }
}

impl SinkWriter for NetSink {
    fn write(&mut self, r: &Record) {
        self.write_id(RecordId::next(), r)
    }

    fn write_id(&mut self, id: RecordId, r: &Record) {
        let mut line = (self.render)(id, r);
        line.push(b'\n');
        let _ = self.pump();
        if self.conn.is_some() && self.retry.is_empty() && self.spill.is_empty() {
            match self.send(line) {
                Ok(()) => return,
                Err((e, l)) => {
                    // Sent nowhere: it goes first on the next connection.
                    self.retry.push_back(l);
                    self.disconnected(&e);
                    return;
                }
            }
        }
        self.spill(&line);
    }

    fn tick(&mut self) {
        let _ = self.pump();
    }

    fn reopen(&mut self) {
        // Reconnect: a collector that was restarted behind a load balancer, for example.
        if self.conn.is_some() {
            let _ = self.confirm();
            self.disconnected(&io::Error::other("reopen requested"));
        }
        self.next_attempt = Instant::now();
        let _ = self.pump();
    }

    fn close(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.conn.is_some() && self.pending() && Instant::now() < deadline {
            let _ = self.pump();
            if self.spill.is_empty() && self.retry.is_empty() {
                // Only confirmations are outstanding.
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if self.conn.is_some() {
            let _ = self.confirm();
        }
        let unconfirmed: Vec<Vec<u8>> = self
            .retry
            .drain(..)
            .chain(self.inflight.drain(..).map(|f| f.line))
            .collect();
        // A disk spill keeps them for the next run (a stream or a consumer drops what it
        // already has); from a memory spill they are lost.
        let (lost, failed) = self.spill.shutdown(unconfirmed);
        self.counters.lose(Cause::Shutdown, lost);
        self.counters.lose(Cause::SpillError, failed);
        self.conn = None;
        self.counters.set_state("closed");
    }

    fn backlog(&self) -> bool {
        (!self.spill.is_empty() || !self.retry.is_empty()) && self.conn.is_some()
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
