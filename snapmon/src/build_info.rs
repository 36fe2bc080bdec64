//! What this binary is: crate version, commit and build date (stamped by build.rs).

/// Crate version, e.g. `0.1.0`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// 12 hex digits of the commit built, or `unknown` outside git.
pub const COMMIT: &str = env!("SNAPMON_COMMIT");
/// UTC build date, `YYYY-MM-DD` (SOURCE_DATE_EPOCH when the build set it).
pub const BUILD_DATE: &str = env!("SNAPMON_BUILD_DATE");
/// `snapmon --version`: `0.1.0 (commit 1a2b3c4d5e6f, built 2026-12-01)`.
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SNAPMON_COMMIT"),
    ", built ",
    env!("SNAPMON_BUILD_DATE"),
    ")"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_version_names_commit_and_date() {
        assert!(LONG.starts_with(VERSION));
        assert!(
            COMMIT == "unknown"
                || (COMMIT.len() >= 7 && COMMIT.chars().all(|c| c.is_ascii_hexdigit())),
            "{COMMIT}"
        );
        let d: Vec<&str> = BUILD_DATE.split('-').collect();
        assert_eq!(
            d.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [4, 2, 2],
            "{BUILD_DATE}"
        );
        assert!(BUILD_DATE[..4] >= *"2024", "{BUILD_DATE}");
    }
}
