//! The persistent bitmap directory.

use std::io::{Read, Seek};

use serde::{Deserialize, Serialize};

use super::base::{
    align8, escape_bytes, invalid, too_large, Qcow2Error, MAX_BITMAPS, MAX_BITMAP_DIR,
};
use super::reader::Src;
use crate::bytes::{be_u16_padded, be_u32_padded, be_u64_padded};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BitmapEntry {
    /// Offset of this directory entry in the file.
    pub offset: u64,
    pub table_offset: u64,
    pub table_size: u32,
    pub flags: u32,
    pub bitmap_type: u8,
    pub granularity_bits: u8,
    pub name: String,
    pub extra_data_size: u32,
}

pub(super) fn read_bitmap_dir<R: Read + Seek>(
    src: &mut Src<R>,
    nb: u32,
    size: u64,
    dir_off: u64,
) -> Result<Vec<BitmapEntry>, Qcow2Error> {
    too_large("nb_bitmaps", nb.into(), MAX_BITMAPS.into())?;
    too_large("bitmap_directory_size", size, MAX_BITMAP_DIR)?;
    let d = src.read_exact(dir_off, size, "bitmap directory")?;
    let mut out = Vec::new();
    let mut pos = 0u64;
    for _ in 0..nb {
        let p = pos as usize;
        if pos + 24 > size {
            return Err(invalid("bitmap directory", "entry overflows directory"));
        }
        let (name_len, extra) = (be_u16_padded(&d, p + 18), be_u32_padded(&d, p + 20));
        let name_start = pos + 24 + u64::from(extra);
        let end = name_start + u64::from(name_len);
        if end > size {
            return Err(invalid("bitmap directory", "entry overflows directory"));
        }
        out.push(BitmapEntry {
            offset: dir_off.saturating_add(pos),
            table_offset: be_u64_padded(&d, p),
            table_size: be_u32_padded(&d, p + 8),
            flags: be_u32_padded(&d, p + 12),
            bitmap_type: d[p + 16],
            granularity_bits: d[p + 17],
            name: escape_bytes(&d[name_start as usize..end as usize]),
            extra_data_size: extra,
        });
        pos = align8(end);
    }
    Ok(out)
}
