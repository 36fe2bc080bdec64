//! Bounded integer readers for captured buffers that may be short or hostile. Every parser
//! reads through these: a field past the end is `None` (or, for the `_padded` readers, reads
//! as zero bytes), never a panic or an overflow.

/// `N` bytes at `off`, if all of them are in `b`.
fn array<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    b.get(off..off.checked_add(N)?)?.try_into().ok()
}

pub fn le_u16(b: &[u8], off: usize) -> Option<u16> {
    array(b, off).map(u16::from_le_bytes)
}

pub fn le_u32(b: &[u8], off: usize) -> Option<u32> {
    array(b, off).map(u32::from_le_bytes)
}

pub fn le_u64(b: &[u8], off: usize) -> Option<u64> {
    array(b, off).map(u64::from_le_bytes)
}

pub fn le_i32(b: &[u8], off: usize) -> Option<i32> {
    array(b, off).map(i32::from_le_bytes)
}

pub fn le_i64(b: &[u8], off: usize) -> Option<i64> {
    array(b, off).map(i64::from_le_bytes)
}

/// Big-endian unsigned of `n` (≤ 8) bytes at `off`, the bytes past the end of `b` read as
/// zeros: for lossy decoding of a field whose length the caller has checked where it matters.
pub fn be_padded(b: &[u8], off: usize, n: usize) -> u64 {
    (0..n).fold(0u64, |acc, i| {
        (acc << 8) | u64::from(*b.get(off.saturating_add(i)).unwrap_or(&0))
    })
}

pub fn be_u16_padded(b: &[u8], off: usize) -> u16 {
    be_padded(b, off, 2) as u16
}

pub fn be_u32_padded(b: &[u8], off: usize) -> u32 {
    be_padded(b, off, 4) as u32
}

pub fn be_u64_padded(b: &[u8], off: usize) -> u64 {
    be_padded(b, off, 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: [u8; 10] = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0xff];

    #[test]
    fn little_endian_reads_at_every_cut_length() {
        for cut in 0..=B.len() {
            let b = &B[..cut];
            assert_eq!(le_u16(b, 1), (cut >= 3).then_some(0x0302));
            assert_eq!(le_u32(b, 1), (cut >= 5).then_some(0x0504_0302));
            assert_eq!(le_u64(b, 1), (cut >= 9).then_some(0x0908_0706_0504_0302));
            assert_eq!(le_i32(b, 6), (cut >= 10).then_some(0xff09_0807_u32 as i32));
            assert_eq!(
                le_i64(b, 2),
                (cut >= 10).then_some(0xff09_0807_0605_0403_u64 as i64)
            );
        }
    }

    #[test]
    fn offsets_near_usize_max_are_none_not_overflow() {
        for off in [usize::MAX, usize::MAX - 1, usize::MAX - 7] {
            assert_eq!(le_u16(&B, off), None);
            assert_eq!(le_u64(&B, off), None);
            assert_eq!(be_u64_padded(&B, off), 0);
        }
    }

    #[test]
    fn padded_big_endian_reads_missing_bytes_as_zero_at_every_cut_length() {
        for cut in 0..=B.len() {
            let b = &B[..cut];
            let mut full = [0u8; 10];
            full[..cut].copy_from_slice(b);
            assert_eq!(be_u16_padded(b, 1), u16::from_be_bytes([full[1], full[2]]));
            assert_eq!(
                be_u32_padded(b, 2),
                u32::from_be_bytes(full[2..6].try_into().unwrap())
            );
            assert_eq!(
                be_u64_padded(b, 2),
                u64::from_be_bytes(full[2..10].try_into().unwrap())
            );
        }
        assert_eq!(be_padded(&B, 9, 1), 0xff);
        assert_eq!(be_padded(&B, 0, 0), 0);
    }
}
