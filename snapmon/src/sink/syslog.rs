//! Syslog sink: RFC 5424 messages over UDP or TCP with RFC 6587 octet counting (the TCP
//! transport reuses the stream sink's reconnect and spill), and the local socket (`/dev/log`)
//! in the layout syslog(3) writes there (`<PRI>Mmm dd hh:mm:ss snapmon[PID]: MSG`), which
//! every local daemon (journald, rsyslog's imuxsock, syslog-ng's unix-dgram) parses as is.
//!
//! No message is longer than `max_message` (8 KiB, 2 KiB over UDP; rsyslog's default limit
//! is 8 KiB and RFC 5426 only promises 2 KiB datagrams): a longer record is shrunk by
//! `sink::fit`, never cut into invalid JSON.
//!
//! `<PRI>1 TIMESTAMP HOSTNAME snapmon PID MSGID [snapmon@32473 kind="…" id="…" rule="…" severity="…" seq="…"] MSG`
//! - PRI = facility × 8 + severity: critical→2 (crit), high→3 (err), medium→4 (warning),
//!   low→5 (notice), info and events→6 (info), state→5, metric→4.
//! - MSGID = `event`, `alert`, `state` or `metric`; MSG = the record in the sink's format.
//! - 32473 is the documentation enterprise number (RFC 5612).

use std::{io, net::UdpSocket, os::unix::net::UnixDatagram, path::PathBuf, sync::Arc};

use super::{
    config::{Format, SyslogProtocol, SyslogTransport},
    counters::{Cause, SinkCounters, RELAXED},
    fit,
    render::{render_id, RecordId},
    writer::SinkWriter,
};
use crate::record::{Record, Severity};

fn level(r: &Record) -> u8 {
    match r {
        Record::Alert(a) => match a.severity {
            Severity::Critical => 2,
            Severity::High => 3,
            Severity::Medium => 4,
            Severity::Low => 5,
            Severity::Info => 6,
        },
        Record::Event(_) => 6,
        Record::State(_) => 5,
        Record::Metric(_) => 4,
    }
}

/// PARAM-VALUE escaping (RFC 5424 §6.3.3): `"`, `\` and `]`.
fn sd_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

/// Header fields must be printable US-ASCII without spaces.
fn header_field(s: &str, max: usize) -> String {
    let f: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if f.is_empty() {
        "-".into()
    } else {
        f
    }
}

/// `Mmm dd hh:mm:ss` in local time, as syslog(3) writes it.
fn rfc3164_time(unix_ns: i128) -> String {
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let t = unix_ns.div_euclid(1_000_000_000) as libc::time_t;
    // SAFETY: localtime_r fills the zeroed struct we own.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe { libc::localtime_r(&t, &mut tm) };
    format!(
        "{} {:>2} {:02}:{:02}:{:02}",
        MON[tm.tm_mon.clamp(0, 11) as usize],
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

pub struct Formatter {
    pub facility: u8,
    pub host: String,
    pub app: String,
    pub format: Format,
    pub pid: u32,
    pub protocol: SyslogProtocol,
    /// Largest message (header included).
    pub max: usize,
}

impl Formatter {
    /// One message (no framing, no newline), at most `max` bytes.
    pub fn message(&self, id: RecordId, r: &Record) -> Vec<u8> {
        let pri = self.facility as u32 * 8 + level(r) as u32;
        let ts_ns = match r {
            Record::Event(e) => e.ts_unix_ns,
            Record::Alert(a) => a.event.ts_unix_ns,
            _ => crate::clock::now_unix_ns(),
        };
        let mut out = match self.protocol {
            SyslogProtocol::Rfc5424 => self.header_5424(pri, ts_ns, id, r),
            SyslogProtocol::Rfc3164 => format!(
                "<{pri}>{} {}[{}]: ",
                rfc3164_time(ts_ns),
                header_field(&self.app, 32),
                self.pid
            )
            .into_bytes(),
        };
        let body = render_id(self.format, r, Some(id), &self.host, false);
        let budget = self.max.saturating_sub(out.len());
        out.extend_from_slice(&match self.format {
            Format::Tail => fit::fit_text(body, budget),
            _ => fit::fit(body, budget),
        });
        out
    }

    fn header_5424(&self, pri: u32, ts_ns: i128, id: RecordId, r: &Record) -> Vec<u8> {
        // RFC 5424 allows at most 6 fractional digits.
        let ts = crate::clock::rfc3339(ts_ns);
        let ts = format!("{}Z", &ts[..26]);
        let (msgid, sd) = match r {
            Record::Alert(a) => (
                "alert",
                format!(
                    "[snapmon@32473 kind=\"alert\" id=\"{id}\" rule=\"{}\" severity=\"{}\" seq=\"{}\"]",
                    sd_escape(&a.rule_id),
                    a.severity.as_str(),
                    a.event.seq
                ),
            ),
            Record::Event(e) => (
                "event",
                format!(
                    "[snapmon@32473 kind=\"event\" id=\"{id}\" action=\"{}\" seq=\"{}\"]",
                    sd_escape(e.action.as_str()),
                    e.seq
                ),
            ),
            Record::State(s) => (
                "state",
                format!(
                    "[snapmon@32473 kind=\"state\" id=\"{id}\" action=\"{}\"]",
                    sd_escape(s.action)
                ),
            ),
            Record::Metric(m) => (
                "metric",
                format!(
                    "[snapmon@32473 kind=\"metric\" id=\"{id}\" action=\"{}\"]",
                    sd_escape(m.action)
                ),
            ),
        };
        format!(
            "<{pri}>1 {ts} {} {} {} {msgid} {sd} ",
            header_field(&self.host, 255),
            header_field(&self.app, 48),
            self.pid
        )
        .into_bytes()
    }
}

enum Datagram {
    Unix(PathBuf, Option<UnixDatagram>),
    Udp(String, Option<UdpSocket>),
}

/// Datagram transports: no connection to keep, a failed send is a counted drop.
pub struct DatagramSink {
    fmt: Formatter,
    sock: Datagram,
    counters: Arc<SinkCounters>,
}

impl DatagramSink {
    /// Connects at once: `Err` when the target cannot be reached (no `/dev/log`, a socket
    /// not owned by root, an address that does not resolve). UDP cannot tell more.
    pub fn new(
        transport: SyslogTransport,
        address: String,
        fmt: Formatter,
        counters: Arc<SinkCounters>,
    ) -> (Self, io::Result<()>) {
        let sock = match transport {
            SyslogTransport::Udp => Datagram::Udp(address, None),
            _ => Datagram::Unix(PathBuf::from(address), None),
        };
        let mut s = DatagramSink {
            fmt,
            sock,
            counters,
        };
        let r = s.connect();
        match &r {
            Ok(()) => s.counters.set_state("connected"),
            Err(e) => s.counters.set_state(&format!("connecting: {e}")),
        }
        (s, r)
    }

    pub fn target(&self) -> String {
        match &self.sock {
            Datagram::Unix(p, _) => p.display().to_string(),
            Datagram::Udp(a, _) => a.clone(),
        }
    }

    fn connect(&mut self) -> io::Result<()> {
        match &mut self.sock {
            Datagram::Unix(p, s) => {
                if s.is_none() {
                    super::net::check_socket_owner(p)?;
                    let d = UnixDatagram::unbound()?;
                    d.connect(&*p)?;
                    *s = Some(d);
                }
            }
            Datagram::Udp(a, s) => {
                if s.is_none() {
                    let d = UdpSocket::bind(if a.starts_with('[') {
                        "[::]:0"
                    } else {
                        "0.0.0.0:0"
                    })?;
                    d.connect(a.as_str())?;
                    *s = Some(d);
                }
            }
        }
        Ok(())
    }

    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        self.connect()?;
        match &mut self.sock {
            Datagram::Unix(_, s) => {
                let r = s.as_ref().map(|d| d.send(msg)).unwrap_or(Ok(0));
                if r.is_err() {
                    // syslogd restarted: the next record reconnects.
                    *s = None;
                }
                r.map(|_| ())
            }
            Datagram::Udp(_, s) => {
                let r = s.as_ref().map(|d| d.send(msg)).unwrap_or(Ok(0));
                if r.is_err() {
                    *s = None;
                }
                r.map(|_| ())
            }
        }
    }
}

impl SinkWriter for DatagramSink {
    fn write(&mut self, r: &Record) {
        self.write_id(RecordId::next(), r)
    }

    fn write_id(&mut self, id: RecordId, r: &Record) {
        let msg = self.fmt.message(id, r);
        match self.send(&msg) {
            Ok(()) => {
                self.counters.written.fetch_add(1, RELAXED);
                self.counters.set_state("sending");
            }
            Err(e) => {
                self.counters.lose(Cause::WriteError, 1);
                self.counters.set_state(&format!("error: {e}"));
            }
        }
    }
    fn tick(&mut self) {}
    fn reopen(&mut self) {
        match &mut self.sock {
            Datagram::Unix(_, s) => *s = None,
            Datagram::Udp(_, s) => *s = None,
        }
    }
    fn close(&mut self) {
        self.counters.set_state("closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{event::Event, record::Alert};
    use snapmon_schema::record::Record as View;

    #[test]
    fn rfc5424_framing_and_escaping() {
        let f = Formatter {
            facility: 16,
            host: "host 1".into(),
            app: "snapmon".into(),
            format: Format::Tail,
            pid: 7,
            protocol: SyslogProtocol::Rfc5424,
            max: 8192,
        };
        let r = Record::Alert(Box::new(Alert {
            rule_id: "SM\"]1".into(),
            rule_name: "x".into(),
            severity: Severity::High,
            technique: vec![],
            message: "bad\x1b[31m".into(),
            event: Event {
                seq: 9,
                ts_unix_ns: 1_795_887_000_123_456_789,
                ..Default::default()
            },
            related_seq: vec![],
        }));
        let id = RecordId(5);
        let m = String::from_utf8(f.message(id, &r)).unwrap();
        let want = format!("<131>1 2026-11-28T17:30:00.123456Z host1 snapmon 7 alert [snapmon@32473 kind=\"alert\" id=\"{id}\" rule=\"SM\\\"\\]1\" severity=\"high\" seq=\"9\"] ! HIGH");
        assert!(m.starts_with(&want), "{m}\n{want}");
        assert!(!m.contains('\x1b'));
        // The local socket layout: what syslog(3) writes.
        let f = Formatter {
            protocol: SyslogProtocol::Rfc3164,
            format: Format::Json,
            ..f
        };
        let m = String::from_utf8(f.message(id, &r)).unwrap();
        let (head, json) = m.split_once(": ").unwrap();
        assert!(
            head.starts_with("<131>") && head.ends_with(" snapmon[7]"),
            "{head}"
        );
        assert_eq!(
            head.len(),
            "<131>Nov 28 17:30:00 snapmon[7]".len(),
            "{head}"
        );
        let r = View::parse(json.as_bytes()).unwrap();
        assert_eq!(r.event.id, Some(id.to_string()));
    }

    #[test]
    fn no_message_is_longer_than_the_limit_and_each_is_valid_json() {
        let mut big = crate::sink::fixtures::event(1);
        big.process.args = (0..400)
            .map(|i| crate::event::Bytes(format!("--argument-{i}=value").into_bytes()))
            .collect();
        let r = Record::Event(big);
        for (protocol, max) in [
            (SyslogProtocol::Rfc5424, 2048),
            (SyslogProtocol::Rfc5424, 8192),
            (SyslogProtocol::Rfc3164, 1024),
        ] {
            let f = Formatter {
                facility: 16,
                host: "h".into(),
                app: "snapmon".into(),
                format: Format::Json,
                pid: 7,
                protocol,
                max,
            };
            let m = f.message(RecordId(1), &r);
            assert!(m.len() <= max, "{} > {max}", m.len());
            let s = String::from_utf8(m).unwrap();
            let v: serde_json::Value = serde_json::from_str(&s[s.find('{').unwrap()..]).unwrap();
            assert!(
                v["snapmon"]["truncated"]["original_bytes"]
                    .as_u64()
                    .unwrap()
                    > max as u64
            );
            assert_eq!(View::of(&v).unwrap().action(), Some("pwrite64"));
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// A real rsyslogd (a declared dependency, installed by `cargo xtask setup`): listening
    /// on 127.0.0.1 UDP and TCP, writing what it parsed to a file.
    struct Rsyslogd {
        child: std::process::Child,
        out: PathBuf,
    }

    impl Drop for Rsyslogd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn rsyslogd(dir: &std::path::Path, udp: u16, tcp: u16) -> Rsyslogd {
        let bin = ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("rsyslogd is missing: run `cargo xtask setup` (apt-get install rsyslog)");
        let out = dir.join("out.log");
        let conf = dir.join("rsyslog.conf");
        std::fs::write(
            &conf,
            format!(
                r#"global(workDirectory="{d}")
module(load="imudp")
module(load="imtcp")
input(type="imudp" address="127.0.0.1" port="{udp}")
input(type="imtcp" address="127.0.0.1" port="{tcp}")
template(name="t" type="string" string="%pri% %app-name% %msgid% %structured-data% %msg%\n")
*.* action(type="omfile" file="{o}" template="t" flushOnTXEnd="on" asyncWriting="off")
"#,
                d = dir.display(),
                o = out.display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new(bin)
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting rsyslogd");
        let d = Rsyslogd { child, out };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", tcp)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "rsyslogd did not listen"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        d
    }

    #[test]
    fn alerts_reach_a_real_rsyslog_over_udp_and_tcp() {
        use crate::sink::{config::SinkConfig, fixtures, SinkSet};
        let dir = crate::testutil::TmpDir::new("rsyslog");
        let (udp, tcp) = (free_port(), free_port());
        let d = rsyslogd(&dir, udp, tcp);
        let cfgs = [
            SinkConfig::parse_spec(&format!(
                "syslog:127.0.0.1:{tcp},transport=tcp,name=tcp,alerts_only=true"
            ))
            .unwrap(),
            SinkConfig::parse_spec(&format!(
                "syslog:127.0.0.1:{udp},transport=udp,name=udp,format=tail,facility=auth,min_severity=critical"
            ))
            .unwrap(),
        ];
        let mut set = SinkSet::start(&cfgs, "testhost".into()).unwrap();
        set.send(&Record::Event(fixtures::event(1))).unwrap();
        set.send(&fixtures::alert(2, Severity::High)).unwrap();
        set.send(&fixtures::alert(3, Severity::Critical)).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        let got = loop {
            let s = std::fs::read_to_string(&d.out).unwrap_or_default();
            if s.lines().count() >= 3 {
                break s;
            }
            // UDP can be lost while imudp starts: resend the UDP one (the TCP sink is exact).
            set.send(&fixtures::alert(3, Severity::Critical)).ok();
            assert!(
                std::time::Instant::now() < deadline,
                "rsyslog got only:\n{s}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        };
        set.shutdown(std::time::Duration::from_secs(3));
        let lines: Vec<&str> = got.lines().collect();
        // TCP, octet counted, JSON: the high alert (local0.err = 131) then the critical (130).
        let tcp_high = lines
            .iter()
            .find(|l| l.starts_with("131 "))
            .unwrap_or_else(|| panic!("{got}"));
        assert!(
            tcp_high.starts_with("131 snapmon alert [snapmon@32473 kind=\"alert\" id=\"")
                && tcp_high.contains("\" rule=\"SM001\" severity=\"high\" seq=\"2\"] {"),
            "{tcp_high}"
        );
        let json = &tcp_high[tcp_high.find('{').unwrap()..];
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(View::of(&v).unwrap().rule_id(), Some("SM001"));
        assert_eq!(v["host"]["hostname"], "testhost");
        assert!(
            lines.iter().any(|l| l.starts_with("130 snapmon alert")),
            "{got}"
        );
        // UDP, tail format, auth.crit = 34.
        let udp_line = lines
            .iter()
            .find(|l| l.starts_with("34 "))
            .unwrap_or_else(|| panic!("{got}"));
        assert!(udp_line.contains("! CRITICAL SM001"), "{udp_line}");
        // Plain events were filtered out of both.
        assert!(!got.contains("kind=\"event\""));
    }
}
