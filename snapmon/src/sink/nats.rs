//! NATS JetStream sink: every record is published to `PREFIX.HOST.KIND` (KIND: `event`,
//! `alert`, `state`, `metric`) with `Nats-Msg-Id` = the record id, and counts as written only
//! once the stream acknowledged it. What was not acknowledged (a leader election, the cluster
//! down) is published again, in order, with the same id, so the stream's duplicate window
//! stores it once: at-least-once delivery, exactly once in the stream. While the cluster is
//! unreachable records go to the same bounded spill as the tcp sink (memory, or segment files
//! kept across restarts).
//!
//! The sink thread is synchronous; the client runs on a one-worker tokio runtime of its own,
//! so its reconnects and pings go on between records.

use std::{
    collections::VecDeque,
    io,
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::{header, jetstream, HeaderMap};

use super::{
    config::{Format, SinkConfig, Unreachable},
    counters::{Cause, SinkCounters, RELAXED},
    render::{render_id, RecordId},
    spill::Spill,
    writer::SinkWriter,
};
use crate::record::Record;

/// A queued message: `SUBJECT SP ID SP PAYLOAD \n`, the spill's line format.
fn line(subject: &str, id: &str, payload: &[u8]) -> Vec<u8> {
    let mut l = Vec::with_capacity(subject.len() + id.len() + payload.len() + 3);
    l.extend_from_slice(subject.as_bytes());
    l.push(b' ');
    l.extend_from_slice(id.as_bytes());
    l.push(b' ');
    l.extend_from_slice(payload);
    l.push(b'\n');
    l
}

fn split(l: &[u8]) -> Option<(&str, &str, &[u8])> {
    let l = l.strip_suffix(b"\n").unwrap_or(l);
    let a = l.iter().position(|&b| b == b' ')?;
    let b = a + 1 + l[a + 1..].iter().position(|&b| b == b' ')?;
    Some((
        std::str::from_utf8(&l[..a]).ok()?,
        std::str::from_utf8(&l[a + 1..b]).ok()?,
        &l[b + 1..],
    ))
}

/// A subject token from the host name: NATS splits subjects on dots and reserves `*`, `>`.
pub fn subject_token(s: &str) -> String {
    let t: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if t.is_empty() {
        "_".into()
    } else {
        t
    }
}

fn kind(r: &Record) -> &'static str {
    match r {
        Record::Event(_) => "event",
        Record::Alert(_) => "alert",
        Record::State(_) => "state",
        Record::Metric(_) => "metric",
    }
}

pub struct NatsSink {
    rt: tokio::runtime::Runtime,
    client: async_nats::Client,
    js: jetstream::Context,
    /// `PREFIX.HOST`.
    subject_base: String,
    stream: Option<String>,
    format: Format,
    host: String,
    spill: Spill,
    /// Published but not acknowledged when the cluster went away: published again first.
    retry: VecDeque<Vec<u8>>,
    inflight: VecDeque<(Vec<u8>, jetstream::context::PublishAckFuture)>,
    max_inflight: usize,
    up: bool,
    backoff_min: Duration,
    backoff_max: Duration,
    backoff: Duration,
    next_attempt: Instant,
    counters: Arc<SinkCounters>,
}

fn server_url(a: &str) -> String {
    if a.contains("://") {
        a.to_string()
    } else {
        format!("nats://{a}")
    }
}

impl NatsSink {
    pub fn new(
        c: &SinkConfig,
        format: Format,
        host: String,
        counters: Arc<SinkCounters>,
    ) -> io::Result<Self> {
        let o = c.options();
        let max = o.spill_size.unwrap_or(64 << 20);
        let spill = match &o.spill_dir {
            Some(d) => Spill::disk(d.clone(), max)?,
            None => Spill::memory(max),
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sink nats io")
            .enable_all()
            .build()?;
        let servers: Vec<String> = c.nats_servers().iter().map(|s| server_url(s)).collect();
        let ack_timeout = Duration::from_millis(o.write_timeout.unwrap_or(5000).max(1));
        let backoff_min = Duration::from_millis(o.backoff_min.unwrap_or(100).max(1));
        let backoff_max = Duration::from_millis(o.backoff_max.unwrap_or(30_000)).max(backoff_min);
        let client = rt
            .block_on(
                async_nats::ConnectOptions::new()
                    .name(format!("snapmon {}", c.name()))
                    .retry_on_initial_connect()
                    .max_reconnects(None)
                    .connection_timeout(Duration::from_secs(2))
                    .reconnect_delay_callback(move |n| {
                        (backoff_min * 2u32.saturating_pow(n.min(16) as u32)).min(backoff_max)
                    })
                    .connect(servers.as_slice()),
            )
            .map_err(io::Error::other)?;
        let js = {
            // The context spawns its acknowledgement task on the runtime.
            let _in_rt = rt.enter();
            jetstream::ContextBuilder::new()
                .timeout(ack_timeout)
                .ack_timeout(ack_timeout)
                .build(client.clone())
        };
        let mut s = NatsSink {
            rt,
            client,
            js,
            subject_base: format!("{}.{}", c.subject_prefix(), subject_token(&host)),
            stream: o.stream.clone(),
            format,
            host,
            spill,
            retry: VecDeque::new(),
            inflight: VecDeque::new(),
            max_inflight: o.max_inflight.unwrap_or(256).max(1) as usize,
            up: false,
            backoff_min,
            backoff_max,
            backoff: backoff_min,
            next_attempt: Instant::now(),
            counters,
        };
        s.counters.spill_bytes.store(s.spill.bytes(), RELAXED);
        // Reachable means connected within a couple of seconds.
        let deadline = Instant::now() + Duration::from_secs(2).min(ack_timeout * 2);
        while !s.connected() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if s.connected() {
            s.up = true;
            s.counters.set_state("connected");
            s.pump();
        } else {
            let why = format!("no server of {} answered", servers.join(", "));
            s.counters.set_state(&format!("connecting: {why}"));
            match c.on_unreachable() {
                Unreachable::Fail => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        format!("{why} (on_unreachable = \"warn\" starts anyway, spilling)"),
                    ))
                }
                Unreachable::Warn => eprintln!(
                    "snapmon: WARNING: sink {}: {why}; records are spilled until the cluster is back (snapmon_sink_up 0)",
                    s.counters.name
                ),
            }
        }
        Ok(s)
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Publish one queued line without waiting for its acknowledgement.
    fn publish(&mut self, l: Vec<u8>) -> Result<(), (io::Error, Vec<u8>)> {
        if !self.connected() {
            // The client would buffer it unseen: keep it ourselves.
            return Err((io::ErrorKind::NotConnected.into(), l));
        }
        if self.inflight.len() >= self.max_inflight {
            if let Err(e) = self.settle(self.max_inflight / 2) {
                return Err((e, l));
            }
        }
        let Some((subject, id, payload)) = split(&l) else {
            // A damaged spill line: nothing to publish.
            self.counters.lose(Cause::SpillError, 1);
            return Ok(());
        };
        let mut h = HeaderMap::new();
        h.insert(header::NATS_MESSAGE_ID, id);
        if let Some(st) = &self.stream {
            h.insert(header::NATS_EXPECTED_STREAM, st.as_str());
        }
        let r = self.rt.block_on(self.js.publish_with_headers(
            subject.to_string(),
            h,
            bytes::Bytes::copy_from_slice(payload),
        ));
        match r {
            Ok(fut) => {
                self.inflight.push_back((l, fut));
                Ok(())
            }
            Err(e) => Err((io::Error::other(e), l)),
        }
    }

    /// Wait for acknowledgements until at most `keep` are outstanding. A failed one takes
    /// the sink down: it and every later one are published again when the cluster is back.
    fn settle(&mut self, keep: usize) -> io::Result<()> {
        let mut n = 0;
        let mut res = Ok(());
        while self.inflight.len() > keep {
            let Some((l, fut)) = self.inflight.pop_front() else {
                break;
            };
            match self.rt.block_on(std::future::IntoFuture::into_future(fut)) {
                Ok(_) => n += 1,
                Err(e) => {
                    res = Err((io::Error::other(e), l));
                    break;
                }
            }
        }
        self.counters.written.fetch_add(n, RELAXED);
        match res {
            Ok(()) => Ok(()),
            Err((e, l)) => {
                self.down(&e, Some(l));
                Err(e)
            }
        }
    }

    /// The cluster is unreachable: `failed` and what is still in flight go back in front of
    /// the queue, in order.
    fn down(&mut self, e: &io::Error, failed: Option<Vec<u8>>) {
        for (l, _) in self.inflight.drain(..).rev() {
            self.retry.push_front(l);
        }
        if let Some(l) = failed {
            self.retry.push_front(l);
        }
        if self.up {
            self.counters.disconnects.fetch_add(1, RELAXED);
        }
        self.up = false;
        self.counters.set_state(&format!("disconnected: {e}"));
        self.next_attempt = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(self.backoff_max);
    }

    fn spill(&mut self, l: &[u8]) {
        match self.spill.push(l) {
            Ok(true) => {}
            Ok(false) => self.counters.lose(Cause::SpillFull, 1),
            Err(_) => self.counters.lose(Cause::SpillError, 1),
        }
        self.counters.spill_bytes.store(self.spill.bytes(), RELAXED);
    }

    /// The oldest queued line (retry first, then the spill).
    fn head(&mut self) -> Option<Vec<u8>> {
        if let Some(l) = self.retry.front() {
            return Some(l.clone());
        }
        match self.spill.peek() {
            Ok(l) => l,
            Err(_) => {
                self.spill.pop();
                self.counters.lose(Cause::SpillError, 1);
                None
            }
        }
    }

    fn pop_head(&mut self) {
        if self.retry.pop_front().is_none() {
            self.spill.pop();
        }
    }

    /// Come back up when due (the oldest queued record is the probe), then replay a bounded
    /// batch, oldest first.
    fn pump(&mut self) {
        if !self.up {
            if Instant::now() < self.next_attempt || !self.connected() {
                return;
            }
            match self.head() {
                None => {}
                Some(l) => {
                    if let Err((e, _)) = self.publish(l) {
                        self.down(&e, None);
                        return;
                    }
                    self.pop_head();
                    if self.settle(0).is_err() {
                        return;
                    }
                }
            }
            self.up = true;
            self.backoff = self.backoff_min;
            self.counters.set_state("connected");
        }
        for _ in 0..4096 {
            let Some(l) = self.head() else { break };
            if let Err((e, _)) = self.publish(l) {
                self.down(&e, None);
                break;
            }
            self.pop_head();
            if !self.up {
                break;
            }
        }
        let _ = self.settle(0);
        self.counters.spill_bytes.store(self.spill.bytes(), RELAXED);
    }
}

impl SinkWriter for NatsSink {
    fn write(&mut self, r: &Record) {
        self.write_id(RecordId::next(), r)
    }

    fn write_id(&mut self, id: RecordId, r: &Record) {
        let payload = render_id(self.format, r, Some(id), &self.host, false);
        let l = line(
            &format!("{}.{}", self.subject_base, kind(r)),
            &id.to_string(),
            &payload,
        );
        if self.up && self.retry.is_empty() && self.spill.is_empty() {
            if let Err((e, l)) = self.publish(l) {
                self.retry.push_back(l);
                self.down(&e, None);
            }
            return;
        }
        self.spill(&l);
    }

    fn idle(&mut self) {
        if self.up {
            let _ = self.settle(0);
        }
    }

    fn tick(&mut self) {
        self.pump();
    }

    fn reopen(&mut self) {}

    fn close(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(3);
        while (!self.retry.is_empty() || !self.spill.is_empty() || !self.inflight.is_empty())
            && Instant::now() < deadline
        {
            self.pump();
            if !self.up {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let unconfirmed: Vec<Vec<u8>> = self
            .retry
            .drain(..)
            .chain(self.inflight.drain(..).map(|(l, _)| l))
            .collect();
        // A disk spill keeps them for the next run (a stream or a consumer drops what it
        // already has); from a memory spill they are lost.
        let (lost, failed) = self.spill.shutdown(unconfirmed);
        self.counters.lose(Cause::Shutdown, lost);
        self.counters.lose(Cause::SpillError, failed);
        let _ = self.rt.block_on(self.client.flush());
        self.counters.set_state("closed");
    }

    fn backlog(&self) -> bool {
        self.up && (!self.retry.is_empty() || !self.spill.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_subjects_are_tokens() {
        let l = line("snapmon.h.event", "ab-1", b"{\"a\":\"x y\"}");
        assert_eq!(
            split(&l),
            Some(("snapmon.h.event", "ab-1", &b"{\"a\":\"x y\"}"[..]))
        );
        assert_eq!(subject_token("web-1.example.com"), "web-1_example_com");
        assert_eq!(subject_token("a*>b c"), "a__b_c");
        assert_eq!(subject_token(""), "_");
    }
}
