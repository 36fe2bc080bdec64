//! The `_IOC` split of an ioctl cmd: direction, type, number, size.

use serde::Serialize;

pub const IOC_NONE: u32 = 0;
pub const IOC_WRITE: u32 = 1;
pub const IOC_READ: u32 = 2;

/// Generic Linux `_IOC(dir, type, nr, size)` fields of a cmd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IocSplit {
    pub dir: &'static str,
    #[serde(rename = "type")]
    pub ty: u8,
    pub nr: u8,
    pub size: u16,
}

impl IocSplit {
    pub fn of(cmd: u32) -> Self {
        IocSplit {
            dir: match cmd >> 30 {
                IOC_NONE => "none",
                IOC_WRITE => "w",
                IOC_READ => "r",
                _ => "rw",
            },
            ty: (cmd >> 8) as u8,
            nr: cmd as u8,
            size: ((cmd >> 16) & 0x3fff) as u16,
        }
    }
}
