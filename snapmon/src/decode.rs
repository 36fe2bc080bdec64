//! Decode stage: ring-buffer bytes → typed kernel records. Never panics on bad input.

use snapmon_common::{
    EnforceEvent, EventKind, ExecEvent, ExitEvent, FileOpenEvent, FileWriteEvent, ForkEvent,
    Header, IoctlEvent, NamespaceEvent, RespondEvent, UringRegisterEvent,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {have} bytes is shorter than its {what} ({need} bytes)")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
}

impl DecodeError {
    /// Stable cause name for loss accounting.
    pub fn cause(&self) -> &'static str {
        match self {
            DecodeError::Truncated { .. } => "decode_truncated",
            DecodeError::UnknownKind(_) => "decode_unknown_kind",
        }
    }
}

/// A kernel record, copied out of the ring buffer.
#[derive(Debug, Clone)]
pub enum RawEvent {
    Fork(ForkEvent),
    Exec(Box<ExecEvent>),
    Exit(ExitEvent),
    Write(Box<FileWriteEvent>),
    Open(Box<FileOpenEvent>),
    Namespace(Box<NamespaceEvent>),
    Ioctl(Box<IoctlEvent>),
    Enforce(Box<EnforceEvent>),
    Respond(Box<RespondEvent>),
    UringRegister(UringRegisterEvent),
}

impl RawEvent {
    pub fn header(&self) -> &Header {
        match self {
            RawEvent::Fork(e) => &e.hdr,
            RawEvent::Exec(e) => &e.hdr,
            RawEvent::Exit(e) => &e.hdr,
            RawEvent::Write(e) => &e.hdr,
            RawEvent::Open(e) => &e.hdr,
            RawEvent::Namespace(e) => &e.hdr,
            RawEvent::Ioctl(e) => &e.hdr,
            RawEvent::Enforce(e) => &e.hdr,
            RawEvent::Respond(e) => &e.hdr,
            RawEvent::UringRegister(e) => &e.hdr,
        }
    }
}

/// Copy a `T` out of `buf` (wire types are plain data; any bit pattern is valid).
fn read<T: Copy>(buf: &[u8], what: &'static str) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if buf.len() < need {
        return Err(DecodeError::Truncated {
            what,
            need,
            have: buf.len(),
        });
    }
    // SAFETY: length checked; the wire structs are repr(C) integers and byte arrays only.
    Ok(unsafe { std::ptr::read_unaligned(buf.as_ptr() as *const T) })
}

pub fn decode(buf: &[u8]) -> Result<RawEvent, DecodeError> {
    let hdr: Header = read(buf, "header")?;
    let kind = EventKind::from_u32(hdr.kind).ok_or(DecodeError::UnknownKind(hdr.kind))?;
    Ok(match kind {
        EventKind::ProcessFork => RawEvent::Fork(read(buf, "fork record")?),
        EventKind::ProcessExec => RawEvent::Exec(Box::new(read(buf, "exec record")?)),
        EventKind::ProcessExit => RawEvent::Exit(read(buf, "exit record")?),
        EventKind::FileWrite => RawEvent::Write(Box::new(read(buf, "write record")?)),
        EventKind::FileOpen => RawEvent::Open(Box::new(read(buf, "open record")?)),
        EventKind::Namespace => RawEvent::Namespace(Box::new(read(buf, "namespace record")?)),
        EventKind::Ioctl => RawEvent::Ioctl(Box::new(read(buf, "ioctl record")?)),
        EventKind::Enforce => RawEvent::Enforce(Box::new(read(buf, "enforce record")?)),
        EventKind::Respond => RawEvent::Respond(Box::new(read(buf, "respond record")?)),
        EventKind::UringRegister => RawEvent::UringRegister(read(buf, "io_uring register record")?),
    })
}

/// Bytes up to the first NUL, bounded by `len` and the buffer.
pub fn cstr(buf: &[u8], len: usize) -> &[u8] {
    let b = &buf[..len.min(buf.len())];
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    &b[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapmon_common::{FileKey, WriteOp, DATA_LEN};

    fn as_bytes<T>(v: &T) -> Vec<u8> {
        // SAFETY: test-only view of a plain-data struct.
        unsafe { std::slice::from_raw_parts(v as *const T as *const u8, size_of::<T>()) }.to_vec()
    }

    fn write_event() -> FileWriteEvent {
        let mut e: FileWriteEvent = unsafe { std::mem::zeroed() };
        e.hdr.kind = EventKind::FileWrite as u32;
        e.hdr.tgid = 42;
        e.op = WriteOp::Pwrite as u16;
        e.file = FileKey {
            dev: 7,
            _pad: 0,
            ino: 1234,
        };
        e.offset = 60;
        e.len = 12;
        e.data_len = 12;
        e.data[..4].copy_from_slice(&[0, 0, 0, 3]);
        e
    }

    #[test]
    fn decodes_a_write_record() {
        let bytes = as_bytes(&write_event());
        match decode(&bytes).unwrap() {
            RawEvent::Write(w) => {
                assert_eq!(
                    (w.offset, w.len, w.file.ino, w.hdr.tgid),
                    (60, 12, 1234, 42)
                );
                assert_eq!(&w.data[..4], &[0, 0, 0, 3]);
                assert_eq!(w.data.len(), DATA_LEN);
            }
            other => panic!("wrong kind: {other:?}"),
        }
    }

    #[test]
    fn truncated_and_unknown_records_are_typed_errors() {
        let bytes = as_bytes(&write_event());
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut} decoded");
        }
        assert!(matches!(
            decode(&bytes[..10]),
            Err(DecodeError::Truncated { what: "header", .. })
        ));
        let mut bad = bytes.clone();
        bad[..4].copy_from_slice(&999u32.to_le_bytes());
        assert_eq!(decode(&bad).unwrap_err(), DecodeError::UnknownKind(999));
    }

    #[test]
    fn respond_records_decode_and_every_cut_is_an_error() {
        let mut e: RespondEvent = unsafe { std::mem::zeroed() };
        e.hdr.kind = EventKind::Respond as u32;
        e.signal = 9;
        e.signal_ns = 1234;
        let bytes = as_bytes(&e);
        match decode(&bytes).unwrap() {
            RawEvent::Respond(r) => assert_eq!((r.signal, r.signal_ns), (9, 1234)),
            other => panic!("wrong kind: {other:?}"),
        }
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut} decoded");
        }
    }

    #[test]
    fn uring_register_records_decode_and_every_cut_is_an_error() {
        let mut e: UringRegisterEvent = unsafe { std::mem::zeroed() };
        e.hdr.kind = EventKind::UringRegister as u32;
        e.file = FileKey {
            dev: 7,
            _pad: 0,
            ino: 99,
        };
        (e.fd, e.ring_fd, e.slot, e.opcode) = (5, 3, 2, 13);
        let bytes = as_bytes(&e);
        match decode(&bytes).unwrap() {
            RawEvent::UringRegister(r) => assert_eq!(
                (r.file.ino, r.fd, r.ring_fd, r.slot, r.opcode),
                (99, 5, 3, 2, 13)
            ),
            other => panic!("wrong kind: {other:?}"),
        }
        for cut in 0..bytes.len() {
            let err = decode(&bytes[..cut]).unwrap_err();
            let what = if cut < size_of::<Header>() {
                "header"
            } else {
                "io_uring register record"
            };
            assert!(
                matches!(err, DecodeError::Truncated { what: w, need, have } if w == what && have == cut && need > cut),
                "cut at {cut}: {err:?}"
            );
        }
    }

    #[test]
    fn cstr_stops_at_nul_and_bounds() {
        assert_eq!(cstr(b"abc\0def", 7), b"abc");
        assert_eq!(cstr(b"abcdef", 3), b"abc");
        assert_eq!(cstr(b"ab", 99), b"ab");
    }
}
