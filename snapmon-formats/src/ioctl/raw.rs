//! C strings copied out of a captured argument, kept as raw bytes.

use std::fmt;

use serde::{Serialize, Serializer};

/// A C string copied out of a captured buffer, kept as raw bytes.
///
/// `Display`/`Serialize` escape it losslessly: `\\` for a backslash, `\xNN`
/// for bytes that are not valid UTF-8, `\u{..}` for control characters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RawStr {
    pub bytes: Vec<u8>,
    /// A NUL was found inside the field.
    pub terminated: bool,
}

impl RawStr {
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Lossy UTF-8 view for matching.
    pub fn to_string_lossy(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Display for RawStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.bytes.utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '\\' => f.write_str("\\\\")?,
                    c if (c as u32) < 0x80 && c.is_ascii_control() => {
                        write!(f, "\\u{{{:x}}}", c as u32)?
                    }
                    c if c.is_control() => write!(f, "\\u{{{:x}}}", c as u32)?,
                    c => write!(f, "{c}")?,
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl Serialize for RawStr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Read a NUL-terminated string from a fixed field `[off, off+field_len)`.
/// Returns the string and whether the capture ended before the field did
/// without a NUL (i.e. the value is cut short).
pub(super) fn read_cstr(b: &[u8], off: usize, field_len: usize) -> (RawStr, bool) {
    let end_field = off.saturating_add(field_len);
    let avail = b
        .get(off.min(b.len())..end_field.min(b.len()))
        .unwrap_or(&[]);
    match avail.iter().position(|&c| c == 0) {
        Some(n) => (
            RawStr {
                bytes: avail[..n].to_vec(),
                terminated: true,
            },
            false,
        ),
        None => (
            RawStr {
                bytes: avail.to_vec(),
                terminated: false,
            },
            end_field > b.len(),
        ),
    }
}
