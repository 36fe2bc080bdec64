//! systemd's notify protocol (sd_notify(3)), spoken directly: READY/RELOADING/STOPPING and
//! watchdog keep-alives on `$NOTIFY_SOCKET`. Outside a `Type=notify` unit every call is a no-op.

use std::{os::unix::net::UnixDatagram, time::Duration};

/// Where the notifications go, and how often the watchdog wants to hear from us.
pub struct Notifier {
    /// The socket and its address; None when no service manager listens.
    target: Option<(UnixDatagram, Address)>,
    /// `WatchdogSec` (from `$WATCHDOG_USEC`), when it applies to this process.
    watchdog: Option<Duration>,
}

enum Address {
    Path(std::path::PathBuf),
    /// Linux abstract namespace (`@name` in `$NOTIFY_SOCKET`).
    Abstract(Vec<u8>),
}

impl Notifier {
    /// From the environment systemd sets for the main process of a unit.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let socket = var("NOTIFY_SOCKET");
        // WATCHDOG_PID names the process the watchdog is for; a child that inherited the
        // environment must not ping on its parent's behalf.
        let for_us = var("WATCHDOG_PID")
            .and_then(|p| p.to_str()?.parse::<u32>().ok())
            .is_none_or(|p| p == std::process::id());
        let watchdog = var("WATCHDOG_USEC")
            .and_then(|u| u.to_str()?.parse::<u64>().ok())
            .filter(|u| *u > 0 && for_us)
            .map(Duration::from_micros);
        Self::new(socket.as_deref().map(std::path::Path::new), watchdog)
    }

    /// A notifier for `socket` (`@name`: abstract) with a watchdog period.
    pub fn new(socket: Option<&std::path::Path>, watchdog: Option<Duration>) -> Self {
        use std::os::unix::ffi::OsStrExt as _;
        let target = socket.and_then(|s| {
            let b = s.as_os_str().as_bytes();
            let addr = match b.strip_prefix(b"@") {
                Some(name) => Address::Abstract(name.to_vec()),
                None => Address::Path(s.to_path_buf()),
            };
            Some((UnixDatagram::unbound().ok()?, addr))
        });
        Notifier {
            watchdog: watchdog.filter(|_| target.is_some()),
            target,
        }
    }

    /// Hooks are attached and the `started` record is written.
    pub fn ready(&self, status: &str) {
        self.send(&format!(
            "READY=1\nSTATUS={status}\nMAINPID={}",
            std::process::id()
        ));
    }

    /// A SIGHUP reload begins (`ready` again when it is done).
    pub fn reloading(&self) {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    /// Shutdown begins: draining and writing the `stopped` record.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// How often the event loop must call `ping`: half the watchdog period, as sd_watchdog_enabled(3)
    /// advises. None when no watchdog is configured.
    pub fn ping_every(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    /// WATCHDOG=1. Call it from the loop that reads the ring buffer only: a stalled reader
    /// must stop the pings and let systemd restart the agent.
    pub fn ping(&self) {
        if self.watchdog.is_some() {
            self.send("WATCHDOG=1");
        }
    }

    fn send(&self, msg: &str) {
        let Some((sock, addr)) = &self.target else {
            return;
        };
        // A failed notification is not worth stopping the agent for; systemd notices the
        // missing READY or keep-alive on its own.
        let r = match addr {
            Address::Path(p) => sock.send_to(msg.as_bytes(), p),
            Address::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt as _;
                std::os::unix::net::SocketAddr::from_abstract_name(name)
                    .and_then(|a| sock.send_to_addr(msg.as_bytes(), &a))
            }
        };
        if let Err(e) = r {
            eprintln!("snapmon: notifying systemd: {e}");
        }
    }
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(tag: &str) -> (UnixDatagram, std::path::PathBuf) {
        let p = std::env::temp_dir().join(format!(
            "snapmon-notify-{tag}-{}-{}",
            std::process::id(),
            monotonic_usec()
        ));
        let s = UnixDatagram::bind(&p).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (s, p)
    }

    fn recv(s: &UnixDatagram) -> String {
        let mut b = [0u8; 512];
        let n = s.recv(&mut b).unwrap();
        String::from_utf8_lossy(&b[..n]).into_owned()
    }

    #[test]
    fn ready_reload_stop_and_pings_reach_the_socket() {
        let (s, p) = listener("path");
        let n = Notifier::new(Some(&p), Some(Duration::from_secs(10)));
        assert_eq!(n.ping_every(), Some(Duration::from_secs(5)));
        n.ready("watching 3 stores");
        let m = recv(&s);
        assert!(
            m.starts_with("READY=1\nSTATUS=watching 3 stores\nMAINPID="),
            "{m}"
        );
        n.ping();
        assert_eq!(recv(&s), "WATCHDOG=1");
        n.reloading();
        assert!(recv(&s).starts_with("RELOADING=1\nMONOTONIC_USEC="));
        n.stopping();
        assert_eq!(recv(&s), "STOPPING=1");
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn abstract_socket_addresses_work() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!(
            "snapmon-notify-test-{}-{}",
            std::process::id(),
            monotonic_usec()
        );
        let a = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let s = UnixDatagram::bind_addr(&a).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier::new(Some(std::path::Path::new(&format!("@{name}"))), None);
        n.stopping();
        assert_eq!(recv(&s), "STOPPING=1");
    }

    #[test]
    fn without_a_manager_nothing_is_sent_and_no_watchdog_runs() {
        let n = Notifier::new(None, Some(Duration::from_secs(10)));
        assert_eq!(n.ping_every(), None);
        n.ready("x");
        n.ping();
        // No socket: a watchdog period alone must not make the loop tick for nothing.
        let (s, p) = listener("nowd");
        let n = Notifier::new(Some(&p), None);
        assert_eq!(n.ping_every(), None);
        n.ping();
        n.stopping();
        // The ping was not sent: the first datagram is STOPPING.
        assert_eq!(recv(&s), "STOPPING=1");
        let _ = std::fs::remove_file(&p);
    }
}
