//! lvm2's metadata checksum (`calc_crc`).

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC_TABLE: [u32; 256] = crc_table();

/// lvm2 `calc_crc`: reflected CRC-32 (poly 0xedb88320) with a caller-chosen
/// seed and *no* final inversion, so it can be chained across a wrapped buffer.
pub fn calc_crc(initial: u32, buf: &[u8]) -> u32 {
    buf.iter().fold(initial, |crc, &b| {
        CRC_TABLE[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8)
    })
}
