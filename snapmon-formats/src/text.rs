//! Text for people: the one escape every path, name and header byte passes through on its way
//! to a terminal or a log, so no file name can inject control sequences or reorder a line.

/// Escapes bytes for display. Valid UTF-8 is kept, except control characters (C0, DEL, C1),
/// the bidi and format characters that can make a path read as another (U+061C, U+200E/F,
/// U+202A..E, U+2066..9) and the backslash itself: each is written as `\xNN` per UTF-8 byte.
/// Invalid UTF-8 bytes become `\xNN`. Escaping the backslash keeps it reversible
/// ([`unescape_bytes`]).
pub fn escape_bytes(bytes: &[u8]) -> String {
    if let Some(s) = plain(bytes) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if needs_escape(c) {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    push_hex(&mut out, b);
                }
            } else {
                out.push(c);
            }
        }
        for &b in chunk.invalid() {
            push_hex(&mut out, b);
        }
    }
    out
}

/// `bytes` as text when [`escape_bytes`] leaves them as they are (valid UTF-8, nothing to
/// escape), checked without building the escaped copy.
pub fn plain(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes)
        .ok()
        .filter(|s| !s.chars().any(needs_escape))
}

/// Composed text whose parts are escaped already (a message naming escaped paths): control
/// and bidi characters that slipped in are escaped, backslashes are left as they are, so the
/// parts' `\xNN` are not escaped twice.
pub fn escape_composed(s: &str) -> String {
    if !s.chars().any(is_hostile) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_hostile(c) {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                push_hex(&mut out, b);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn needs_escape(c: char) -> bool {
    c == '\\' || is_hostile(c)
}

/// What a terminal or a reader would act on or be misled by.
fn is_hostile(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

fn push_hex(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('\\');
    out.push('x');
    out.push(HEX[(b >> 4) as usize] as char);
    out.push(HEX[(b & 0xf) as usize] as char);
}

/// Inverse of [`escape_bytes`]: every `\xNN` becomes the byte NN.
pub fn unescape_bytes(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1] == b'x' {
            if let Some(v) = hex_byte(b[i + 2], b[i + 3]) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn hex_byte(h: u8, l: u8) -> Option<u8> {
    let d = |c: u8| (c as char).to_digit(16).map(|v| v as u8);
    Some(d(h)? << 4 | d(l)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_is_exactly_what_escaping_leaves_alone() {
        let cases: &[&[u8]] = &[
            b"/var/lib/images/vm1.qcow2",
            b"",
            b"caf\xc3\xa9",
            "café/ünï".as_bytes(),
            b"a\\b",
            b"a\x41",
            b"tab\there",
            b"del\x7f",
            b"bad\xff utf8",
            "rtl\u{202e}2woc".as_bytes(),
            "c1\u{85}".as_bytes(),
        ];
        for &c in cases {
            let esc = escape_bytes(c);
            let escaped = std::str::from_utf8(c).is_err() || esc.contains("\\x");
            assert_eq!(plain(c).is_none(), escaped, "{esc}");
            if let Some(p) = plain(c) {
                assert_eq!(p, esc);
            }
        }
    }

    #[test]
    fn bidi_controls_that_reorder_a_line_are_escaped() {
        // "vm1.qcow2" spelled backwards behind U+202E reads as an innocent name.
        let name = "/srv/images/\u{202E}2woqc.1mv\u{2066}x\u{2069}\u{061C}\u{200F}";
        let s = escape_bytes(name.as_bytes());
        assert_eq!(
            s,
            "/srv/images/\\xe2\\x80\\xae2woqc.1mv\\xe2\\x81\\xa6x\\xe2\\x81\\xa9\\xd8\\x9c\\xe2\\x80\\x8f"
        );
        assert_eq!(
            escape_composed(&format!("python3 renamed \\x00 to {name}")),
            format!("python3 renamed \\x00 to {s}")
        );
        assert_eq!(unescape_bytes(&s), name.as_bytes());
    }

    #[test]
    fn controls_backslash_and_invalid_utf8_are_escaped_losslessly() {
        let raw = b"QFI\xfb a\\\n\x1b[31m\x7f\xc2\x85z\xc3\xa4";
        let s = escape_bytes(raw);
        assert_eq!(s, "QFI\\xfb a\\x5c\\x0a\\x1b[31m\\x7f\\xc2\\x85z\u{e4}");
        assert_eq!(unescape_bytes(&s), raw);
        assert_eq!(escape_composed("plain zähler"), "plain zähler");
    }
}
