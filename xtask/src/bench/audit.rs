//! auditd as the comparison point: `-w PATH -p wa` watches on the same files, the daemon
//! started only for its phase, and a `never,task` rule outside it so other phases pay nothing.
//!
//! Why the `never,task` rule: once audit has been enabled the kernel gives every new task the
//! syscall-audit slow path, even with auditing switched off again; the rule opts new tasks
//! (fio) out so the no-agent and snapmon phases are not taxed by the auditd phase before them.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

pub const KEY: &str = "snapmon-bench";

pub struct Audit {
    /// Why auditd could not be measured, when it could not.
    pub unavailable: Option<String>,
    pub was_running: bool,
    initial_enabled: Option<u32>,
    we_started: bool,
    watches: Vec<PathBuf>,
    never_task: bool,
}

fn auditctl(args: &[&str]) -> anyhow::Result<String> {
    let o = Command::new("auditctl")
        .args(args)
        .output()
        .context("spawning auditctl")?;
    if !o.status.success() {
        bail!(
            "auditctl {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim(),
            String::from_utf8_lossy(&o.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn status(key: &str) -> Option<u32> {
    let s = auditctl(&["-s"]).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
}

impl Audit {
    pub fn probe() -> Audit {
        let mut a = Audit {
            unavailable: None,
            was_running: false,
            initial_enabled: None,
            we_started: false,
            watches: Vec::new(),
            never_task: false,
        };
        match auditctl(&["-s"]) {
            Err(e) => a.unavailable = Some(format!("kernel audit status refused: {e}")),
            Ok(_) => {
                a.initial_enabled = status("enabled ");
                a.was_running = status("pid ").is_some_and(|p| p != 0);
            }
        }
        a
    }

    fn set_never_task(&mut self, on: bool) -> anyhow::Result<()> {
        if on != self.never_task {
            auditctl(&[if on { "-A" } else { "-d" }, "never,task"])?;
            self.never_task = on;
        }
        Ok(())
    }

    /// Outside the auditd phase: no daemon we started, auditing off, new tasks opted out.
    pub fn off(&mut self) {
        if self.unavailable.is_some() {
            return;
        }
        for p in std::mem::take(&mut self.watches) {
            let _ = auditctl(&["-W", &p.to_string_lossy(), "-p", "wa", "-k", KEY]);
        }
        if self.we_started {
            if let Some(pid) = status("pid ").filter(|&p| p != 0) {
                // The daemon we started ourselves (its pid from the kernel's audit status).
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                let t0 = Instant::now();
                while status("pid ").is_some_and(|p| p != 0)
                    && t0.elapsed() < Duration::from_secs(10)
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            self.we_started = false;
        }
        if !self.was_running {
            let _ = auditctl(&["-e", "0"]);
        }
        if let Err(e) = self.set_never_task(true) {
            eprintln!("bench: could not add the never,task audit rule: {e}");
        }
    }

    /// The auditd phase: daemon running (started if needed), auditing on, watches in place.
    pub fn on(&mut self, paths: &[&Path]) -> anyhow::Result<()> {
        if let Some(why) = &self.unavailable {
            bail!("auditd unavailable: {why}");
        }
        self.set_never_task(false)?;
        if status("pid ").is_none_or(|p| p == 0) {
            let o = Command::new("auditd").output();
            let t0 = Instant::now();
            while status("pid ").is_none_or(|p| p == 0) && t0.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if status("pid ").is_none_or(|p| p == 0) {
                let why = match o {
                    Err(e) => format!("cannot run auditd: {e}"),
                    Ok(o) => format!(
                        "auditd did not register with the kernel ({}): {}",
                        o.status,
                        String::from_utf8_lossy(&o.stderr).trim()
                    ),
                };
                self.unavailable = Some(why.clone());
                bail!("auditd unavailable: {why}");
            }
            self.we_started = true;
        }
        auditctl(&["-e", "1"]).inspect_err(|e| {
            self.unavailable = Some(e.to_string());
        })?;
        for p in paths {
            auditctl(&["-w", &p.to_string_lossy(), "-p", "wa", "-k", KEY]).inspect_err(|e| {
                self.unavailable = Some(e.to_string());
            })?;
            self.watches.push(p.to_path_buf());
        }
        Ok(())
    }

    /// Put audit back as found (rules removed, enabled state restored).
    pub fn restore(&mut self) {
        if self.unavailable.is_some() && self.initial_enabled.is_none() {
            return;
        }
        self.off();
        let _ = self.set_never_task(false);
        if let Some(e) = self.initial_enabled {
            let _ = auditctl(&["-e", &e.to_string()]);
        }
    }
}
