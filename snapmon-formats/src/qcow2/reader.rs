//! Bounded reads from a possibly hostile image file.

use std::io::{Read, Seek, SeekFrom};

use super::base::Qcow2Error;
use crate::bytes::be_u64_padded;

pub(super) struct Src<'a, R> {
    r: &'a mut R,
    pub(super) len: u64,
}

impl<'a, R: Read + Seek> Src<'a, R> {
    pub(super) fn new(r: &'a mut R) -> Result<Self, Qcow2Error> {
        let len = r.seek(SeekFrom::End(0))?;
        Ok(Self { r, len })
    }

    /// Up to `len` bytes at `off`, clamped at EOF (callers cap `len`).
    pub(super) fn read_clamped(&mut self, off: u64, len: u64) -> Result<Vec<u8>, Qcow2Error> {
        let avail = self.len.saturating_sub(off).min(len);
        let mut buf = Vec::with_capacity(avail as usize);
        if avail > 0 {
            self.r.seek(SeekFrom::Start(off))?;
            (&mut *self.r).take(avail).read_to_end(&mut buf)?;
        }
        Ok(buf)
    }

    pub(super) fn read_exact(
        &mut self,
        off: u64,
        len: u64,
        what: &'static str,
    ) -> Result<Vec<u8>, Qcow2Error> {
        let b = self.read_clamped(off, len)?;
        if (b.len() as u64) < len {
            return Err(Qcow2Error::Truncated {
                what,
                need: off.saturating_add(len),
                have: self.len,
            });
        }
        Ok(b)
    }
}

/// A file read as it will be once a captured write has landed. Hooks fire before
/// the bytes reach the file, so a re-read racing the syscall would see the old
/// header; overlaying the captured bytes makes the re-read independent of timing.
pub struct WithWrite<'a, R> {
    inner: R,
    pos: u64,
    off: u64,
    data: &'a [u8],
}

impl<'a, R> WithWrite<'a, R> {
    pub fn new(inner: R, off: u64, data: &'a [u8]) -> Self {
        Self {
            inner,
            pos: 0,
            off,
            data,
        }
    }
}

impl<R: Read> Read for WithWrite<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let (start, end) = (self.pos, self.pos + n as u64);
        let (ws, we) = (self.off, self.off.saturating_add(self.data.len() as u64));
        let (a, b) = (start.max(ws), end.min(we));
        if a < b {
            buf[(a - start) as usize..(b - start) as usize]
                .copy_from_slice(&self.data[(a - ws) as usize..(b - ws) as usize]);
        }
        self.pos = end;
        Ok(n)
    }
}

impl<R: Seek> Seek for WithWrite<'_, R> {
    fn seek(&mut self, p: SeekFrom) -> std::io::Result<u64> {
        self.pos = self.inner.seek(p)?;
        Ok(self.pos)
    }
}

/// Up to `len` bytes at `off`, clamped at EOF; callers bound `len`.
pub fn read_at<R: Read + Seek>(r: &mut R, off: u64, len: u64) -> Result<Vec<u8>, Qcow2Error> {
    Src::new(r)?.read_clamped(off, len)
}

pub(super) fn u64s(b: &[u8]) -> Vec<u64> {
    b.chunks_exact(8).map(|c| be_u64_padded(c, 0)).collect()
}
