//! Rules stage, maintenance windows at run time: a compiled window (`Window::compile` in
//! the policy) and the local-time conversion that places an event's time in it.

/// Local-time conversion, injectable so tests do not depend on the host's zone.
pub trait LocalTime: Send {
    /// (weekday 0 = Sunday, minute of the day) of a Unix time, in host local time.
    fn local(&self, unix_s: i64) -> (u32, u32);
}

/// The host's zone, through libc `localtime_r` (honours TZ and /etc/localtime).
pub struct HostLocalTime;

impl LocalTime for HostLocalTime {
    fn local(&self, unix_s: i64) -> (u32, u32) {
        let t: libc::time_t = unix_s as libc::time_t;
        // SAFETY: localtime_r writes only into `tm`; both pointers are valid.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
        if !ok {
            let d = unix_s.div_euclid(86_400);
            return (
                ((d + 4).rem_euclid(7)) as u32,
                (unix_s.rem_euclid(86_400) / 60) as u32,
            );
        }
        (tm.tm_wday as u32, (tm.tm_hour * 60 + tm.tm_min) as u32)
    }
}

/// A fixed UTC offset (tests, and `replay --utc`).
pub struct FixedOffset(pub i64);

impl LocalTime for FixedOffset {
    fn local(&self, unix_s: i64) -> (u32, u32) {
        let s = unix_s + self.0;
        let d = s.div_euclid(86_400);
        (
            ((d + 4).rem_euclid(7)) as u32,
            (s.rem_euclid(86_400) / 60) as u32,
        )
    }
}

#[derive(Debug, Clone)]
pub struct Window {
    pub name: String,
    pub start: u32,
    pub end: u32,
    /// Bit per weekday (0 = Sunday); all set when no days are given.
    pub days: u8,
    pub suppress: Vec<String>,
}

impl Window {
    /// Is local (weekday, minute) inside? Windows may cross midnight (22:00–02:00); the
    /// part after midnight belongs to the day the window started.
    pub fn contains(&self, wday: u32, minute: u32) -> bool {
        let on = |d: u32| self.days & (1 << (d % 7)) != 0;
        if self.start < self.end {
            on(wday) && minute >= self.start && minute < self.end
        } else {
            (on(wday) && minute >= self.start) || (on((wday + 6) % 7) && minute < self.end)
        }
    }
}
