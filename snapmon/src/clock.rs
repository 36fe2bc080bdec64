//! Time: the kernel's boot clock to wall time, and wall time as RFC 3339 (every record's
//! timestamp). A leaf: every layer stamps or prints times.

/// Clock conversion from CLOCK_BOOTTIME (kernel timestamps) to wall time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub boot_to_unix_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        let read = |id| {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            unsafe { libc::clock_gettime(id, &mut ts) };
            ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
        };
        Clock {
            boot_to_unix_ns: read(libc::CLOCK_REALTIME) - read(libc::CLOCK_BOOTTIME),
        }
    }
    pub fn unix_ns(&self, boot_ns: u64) -> i128 {
        boot_ns as i128 + self.boot_to_unix_ns
    }
}

/// RFC 3339 UTC with nanoseconds from Unix nanoseconds.
pub fn rfc3339(unix_ns: i128) -> String {
    let mut out = Vec::with_capacity(30);
    write_rfc3339(&mut out, unix_ns);
    String::from_utf8(out).unwrap_or_default()
}

/// `rfc3339` appended to `out`: every record's timestamp, so no String and no UTF-8 check
/// (the digits, `-`, `:`, `T`, `.` and `Z` are ASCII, and none needs escaping in JSON).
pub fn write_rfc3339(out: &mut Vec<u8>, unix_ns: i128) {
    let secs = unix_ns.div_euclid(1_000_000_000) as i64;
    let nanos = unix_ns.rem_euclid(1_000_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    let (hh, mm, ss) = (sod / 3600, (sod % 3600) / 60, sod % 60);
    if !(0..=9999).contains(&y) {
        let s = format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{nanos:09}Z");
        out.extend_from_slice(s.as_bytes());
        return;
    }
    // Digits by hand: `format!` cost a sixth of a render.
    let mut b = *b"0000-00-00T00:00:00.000000000Z";
    let put = |b: &mut [u8], at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(&mut b, 0, 4, y as u64);
    put(&mut b, 5, 2, m as u64);
    put(&mut b, 8, 2, d as u64);
    put(&mut b, 11, 2, hh as u64);
    put(&mut b, 14, 2, mm as u64);
    put(&mut b, 17, 2, ss as u64);
    put(&mut b, 20, 9, u64::from(nanos));
    out.extend_from_slice(&b);
}

pub fn now_unix_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_by_hand_is_what_formatting_gives() {
        let slow = |unix_ns: i128| {
            let secs = unix_ns.div_euclid(1_000_000_000) as i64;
            let nanos = unix_ns.rem_euclid(1_000_000_000) as u32;
            let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
            let z = days + 719_468;
            let era = z.div_euclid(146_097);
            let doe = z - era * 146_097;
            let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
            let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
            let mp = (5 * doy + 2) / 153;
            let d = doy - (153 * mp + 2) / 5 + 1;
            let m = if mp < 10 { mp + 3 } else { mp - 9 };
            let y = yoe + era * 400 + i64::from(m <= 2);
            format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
                sod / 3600,
                (sod % 3600) / 60,
                sod % 60
            )
        };
        let mut ns: i128 = -62_167_219_200_000_000_001; // just before year 0
        let step = 7_919_393_939_393_939;
        while ns < 253_402_300_800_000_000_123 {
            assert_eq!(rfc3339(ns), slow(ns), "{ns}");
            ns += step;
        }
        for ns in [-1, 0, 999_999_999, i64::MAX as i128, -(i64::MAX as i128)] {
            assert_eq!(rfc3339(ns), slow(ns), "{ns}");
        }
    }

    #[test]
    fn write_rfc3339_appends_what_rfc3339_returns() {
        for ns in [
            0,
            1_795_887_000_123_000_000,
            -(i64::MAX as i128),
            i64::MAX as i128,
        ] {
            let mut out = b"x".to_vec();
            write_rfc3339(&mut out, ns);
            assert_eq!(out, [b"x", rfc3339(ns).as_bytes()].concat(), "{ns}");
        }
    }

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(951_782_400_000_000_001),
            "2000-02-29T00:00:00.000000001Z"
        );
        assert_eq!(
            rfc3339(1_795_887_000_123_000_000),
            "2026-11-28T17:30:00.123000000Z"
        );
    }
}
