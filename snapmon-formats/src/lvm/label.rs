//! The PV label (`label_header`, `pv_header`) in the first sectors.

use serde::Serialize;

use super::base::Result;
use super::base::{
    need, LvmError, DISK_LOCN_LEN, INITIAL_CRC, LABEL_HEADER_LEN, LABEL_ID, LABEL_SCAN_SECTORS,
    LVM2_LABEL_TYPE, MAX_DISK_LOCNS, PV_UUID_LEN, SECTOR_SIZE,
};
use super::crc::calc_crc;
use crate::bytes::{le_u32, le_u64};

/// `struct disk_locn`: a byte range on the PV (size 0 = "to end of device").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DiskLocn {
    pub offset: u64,
    pub size: u64,
}

/// Decoded `label_header` + `pv_header` (+ `pv_header_extension`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PvLabel {
    /// Sector index (0..3) the label was found in.
    pub found_in_sector: u64,
    /// `sector_xl` as written; lvm2 ignores a label whose value differs from
    /// where it was found.
    pub sector_xl: u64,
    pub sector_ok: bool,
    pub crc: u32,
    pub crc_computed: u32,
    pub crc_ok: bool,
    pub offset_xl: u32,
    pub label_type: String,
    /// 32 raw uuid characters as stored.
    pub pv_uuid: String,
    pub device_size: u64,
    pub data_areas: Vec<DiskLocn>,
    pub metadata_areas: Vec<DiskLocn>,
    /// `pv_header_extension.version` (lvm2 >= 2.02.116 writes 2).
    pub ext_version: Option<u32>,
    pub ext_flags: Option<u32>,
    pub bootloader_areas: Vec<DiskLocn>,
    /// A disk_locn list was cut off by the end of the sector or the cap.
    pub truncated: bool,
}

impl PvLabel {
    /// Uuid in lvm2's display form `xxxxxx-xxxx-xxxx-xxxx-xxxx-xxxx-xxxxxx`.
    pub fn pv_uuid_formatted(&self) -> String {
        format_lvm_uuid(&self.pv_uuid)
    }

    /// Byte offset of the label sector on the device.
    pub fn label_offset(&self) -> u64 {
        self.found_in_sector.saturating_mul(SECTOR_SIZE as u64)
    }
}

/// Format a 32-char LVM uuid with lvm2's 6-4-4-4-4-4-6 dashes; other lengths
/// are returned unchanged.
pub fn format_lvm_uuid(raw: &str) -> String {
    if raw.len() != 32 || !raw.is_ascii() {
        return raw.to_string();
    }
    let groups = [6, 4, 4, 4, 4, 4, 6];
    let mut out = String::with_capacity(38);
    let mut pos = 0;
    for (i, g) in groups.iter().enumerate() {
        if i > 0 {
            out.push('-');
        }
        out.push_str(&raw[pos..pos + g]);
        pos += g;
    }
    out
}

/// Scan sectors 0..3 of `device_bytes` (bytes from device offset 0) for an
/// LVM2 label.
pub fn parse_label(device_bytes: &[u8]) -> Result<PvLabel> {
    for sector in 0..LABEL_SCAN_SECTORS {
        let off = sector * SECTOR_SIZE;
        match device_bytes.get(off..off + LABEL_ID.len()) {
            Some(id) if id == LABEL_ID => {
                let end = (off + SECTOR_SIZE).min(device_bytes.len());
                return parse_label_sector(&device_bytes[off..end], sector as u64);
            }
            Some(_) => {}
            None => break,
        }
    }
    Err(LvmError::NoLabel)
}

/// Decode one label sector known to sit at `sector_index`.
pub fn parse_label_sector(sector: &[u8], sector_index: u64) -> Result<PvLabel> {
    need(sector, SECTOR_SIZE)?;
    let sector = &sector[..SECTOR_SIZE];
    if &sector[..8] != LABEL_ID {
        return Err(LvmError::NoLabel);
    }
    let sector_xl = le_u64(sector, 8).unwrap_or(0);
    let crc = le_u32(sector, 16).unwrap_or(0);
    let offset_xl = le_u32(sector, 20).unwrap_or(0);
    let type_bytes = &sector[24..32];
    if type_bytes != LVM2_LABEL_TYPE {
        return Err(LvmError::BadLabelType(
            String::from_utf8_lossy(type_bytes).into_owned(),
        ));
    }
    // lvm2 checksums from offset_xl (byte 20) to the end of the sector.
    let crc_computed = calc_crc(INITIAL_CRC, &sector[20..]);

    let pvh = offset_xl as usize;
    if pvh < LABEL_HEADER_LEN || pvh + PV_UUID_LEN + 8 > SECTOR_SIZE {
        return Err(LvmError::BadLabelOffset(offset_xl));
    }
    let pv_uuid = String::from_utf8_lossy(&sector[pvh..pvh + PV_UUID_LEN]).into_owned();
    let device_size = le_u64(sector, pvh + PV_UUID_LEN).unwrap_or(0);

    let mut truncated = false;
    let mut pos = pvh + PV_UUID_LEN + 8;
    let data_areas = read_locn_list(sector, &mut pos, &mut truncated);
    let metadata_areas = if truncated {
        Vec::new()
    } else {
        read_locn_list(sector, &mut pos, &mut truncated)
    };
    // The extension follows the second terminator; version 0 means absent.
    let (mut ext_version, mut ext_flags, mut bootloader_areas) = (None, None, Vec::new());
    if !truncated {
        if let (Some(v), Some(f)) = (le_u32(sector, pos), le_u32(sector, pos + 4)) {
            if v != 0 {
                ext_version = Some(v);
                ext_flags = Some(f);
                pos += 8;
                bootloader_areas = read_locn_list(sector, &mut pos, &mut truncated);
            }
        }
    }

    Ok(PvLabel {
        found_in_sector: sector_index,
        sector_xl,
        sector_ok: sector_xl == sector_index,
        crc,
        crc_computed,
        crc_ok: crc == crc_computed,
        offset_xl,
        label_type: String::from_utf8_lossy(type_bytes).into_owned(),
        pv_uuid,
        device_size,
        data_areas,
        metadata_areas,
        ext_version,
        ext_flags,
        bootloader_areas,
        truncated,
    })
}

/// Read a zero-offset-terminated disk_locn list, advancing `pos` past the
/// terminator.
fn read_locn_list(b: &[u8], pos: &mut usize, truncated: &mut bool) -> Vec<DiskLocn> {
    let mut out = Vec::new();
    loop {
        let (Some(offset), Some(size)) = (le_u64(b, *pos), le_u64(b, *pos + 8)) else {
            *truncated = true;
            return out;
        };
        *pos += DISK_LOCN_LEN;
        if offset == 0 {
            return out;
        }
        if out.len() >= MAX_DISK_LOCNS {
            *truncated = true;
            return out;
        }
        out.push(DiskLocn { offset, size });
    }
}
