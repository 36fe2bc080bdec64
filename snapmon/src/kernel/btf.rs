//! Load stage: a small, bounds-checked BTF reader that locates struct members by name.
//!
//! Aya has no CO-RE for struct fields, so the agent reads the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`) and hands the programs the offsets they need.

use std::collections::HashMap;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("BTF data truncated: {0}")]
    Truncated(&'static str),
    #[error("not BTF (magic {0:#06x})")]
    BadMagic(u16),
    #[error("unknown BTF kind {kind} at type id {id}")]
    UnknownKind { kind: u32, id: u32 },
    #[error("struct `{0}` not found in kernel BTF")]
    NoStruct(String),
    #[error("member `{member}` not found in `{strukt}`")]
    NoMember { strukt: String, member: String },
    #[error("`{0}` is a bitfield, not addressable")]
    Bitfield(String),
    #[error("function `{0}` not found in kernel BTF")]
    NoFunc(String),
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    ty: u32,
    /// Bit offset within the struct.
    bit_off: u32,
    bitfield: bool,
}

#[derive(Debug, Clone)]
struct Type {
    kind: u32,
    name: u32,
    /// Referenced type for modifiers/typedefs/pointers.
    refty: u32,
    /// Member/parameter count.
    vlen: u32,
    members: Vec<Member>,
}

/// Parsed BTF: only what member lookups need.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    structs_by_name: HashMap<String, u32>,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(BtfError::Truncated("type section"))
}

impl Btf {
    pub fn from_sys_fs() -> std::io::Result<Vec<u8>> {
        std::fs::read("/sys/kernel/btf/vmlinux")
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let hdr = data.get(..24).ok_or(BtfError::Truncated("header"))?;
        let magic = u16::from_le_bytes([hdr[0], hdr[1]]);
        if magic != 0xeb9f {
            return Err(BtfError::BadMagic(magic));
        }
        let hdr_len = u32_at(hdr, 4)? as usize;
        let (type_off, type_len) = (u32_at(hdr, 8)? as usize, u32_at(hdr, 12)? as usize);
        let (str_off, str_len) = (u32_at(hdr, 16)? as usize, u32_at(hdr, 20)? as usize);
        let tstart = hdr_len
            .checked_add(type_off)
            .ok_or(BtfError::Truncated("type offset"))?;
        let tsec = data
            .get(tstart..tstart.saturating_add(type_len))
            .ok_or(BtfError::Truncated("type section"))?;
        let sstart = hdr_len
            .checked_add(str_off)
            .ok_or(BtfError::Truncated("string offset"))?;
        let strings = data
            .get(sstart..sstart.saturating_add(str_len))
            .ok_or(BtfError::Truncated("string section"))?
            .to_vec();

        // Type id 0 is void.
        let mut types = vec![Type {
            kind: 0,
            name: 0,
            refty: 0,
            vlen: 0,
            members: vec![],
        }];
        let mut p = 0usize;
        while p + 12 <= tsec.len() {
            let id = types.len() as u32;
            let name = u32_at(tsec, p)?;
            let info = u32_at(tsec, p + 4)?;
            let size_or_type = u32_at(tsec, p + 8)?;
            p += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kflag = info >> 31 == 1;
            let mut members = Vec::new();
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = p + i * 12;
                        let off = u32_at(tsec, m + 8)?;
                        let (bit_off, bitfield) = if kflag {
                            (off & 0x00ff_ffff, off >> 24 != 0)
                        } else {
                            (off, false)
                        };
                        members.push(Member {
                            name: u32_at(tsec, m)?,
                            ty: u32_at(tsec, m + 4)?,
                            bit_off,
                            bitfield,
                        });
                    }
                    vlen * 12
                }
                KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                _ => return Err(BtfError::UnknownKind { kind, id }),
            };
            p = p
                .checked_add(extra)
                .ok_or(BtfError::Truncated("type entry"))?;
            if p > tsec.len() {
                return Err(BtfError::Truncated("type entry"));
            }
            types.push(Type {
                kind,
                name,
                refty: size_or_type,
                vlen: vlen as u32,
                members,
            });
        }
        let mut btf = Btf {
            types,
            strings,
            structs_by_name: HashMap::new(),
        };
        for (id, t) in btf.types.iter().enumerate() {
            if t.kind == KIND_STRUCT && t.name != 0 && !t.members.is_empty() {
                let n = btf.name(t.name).to_string();
                btf.structs_by_name.entry(n).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or(&[]);
        let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    /// Strip typedefs and qualifiers to the underlying type id.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(t)
                    if matches!(
                        t.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = t.refty
                }
                _ => break,
            }
        }
        id
    }

    /// Find `name` among the members of `id`, descending into anonymous structs/unions.
    fn find_member(&self, id: u32, name: &str, depth: u32) -> Option<(u32, u32, bool)> {
        let t = self.types.get(self.resolve(id) as usize)?;
        if depth > 8 || !matches!(t.kind, KIND_STRUCT | KIND_UNION) {
            return None;
        }
        for m in &t.members {
            if m.name != 0 && self.name(m.name) == name {
                return Some((m.bit_off, m.ty, m.bitfield));
            }
        }
        for m in t.members.iter().filter(|m| m.name == 0) {
            if let Some((off, ty, bf)) = self.find_member(m.ty, name, depth + 1) {
                return Some((m.bit_off + off, ty, bf));
            }
        }
        None
    }

    /// Type id of the named struct (the first complete definition).
    pub fn struct_id(&self, name: &str) -> Result<u32, BtfError> {
        self.structs_by_name
            .get(name)
            .copied()
            .ok_or_else(|| BtfError::NoStruct(name.to_string()))
    }

    /// Type id of kernel function (or kfunc) `name`.
    pub fn func_id(&self, name: &str) -> Result<u32, BtfError> {
        self.types
            .iter()
            .position(|t| t.kind == KIND_FUNC && self.name(t.name) == name)
            .map(|i| i as u32)
            .ok_or_else(|| BtfError::NoFunc(name.to_string()))
    }

    /// Number of parameters of kernel function `name` (hook signatures change across versions).
    pub fn func_param_count(&self, name: &str) -> Result<u32, BtfError> {
        self.types
            .iter()
            .find(|t| t.kind == KIND_FUNC && self.name(t.name) == name)
            .and_then(|f| self.types.get(f.refty as usize))
            .filter(|p| p.kind == KIND_FUNC_PROTO)
            .map(|p| p.vlen)
            .ok_or_else(|| BtfError::NoFunc(name.to_string()))
    }

    /// Byte offset of a dotted member path (`f_path.dentry`) inside `strukt`.
    pub fn member_offset(&self, strukt: &str, path: &str) -> Result<u32, BtfError> {
        let mut id = *self
            .structs_by_name
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.to_string()))?;
        let mut bits = 0u32;
        for part in path.split('.') {
            let (off, ty, bitfield) =
                self.find_member(id, part, 0)
                    .ok_or_else(|| BtfError::NoMember {
                        strukt: strukt.to_string(),
                        member: path.to_string(),
                    })?;
            if bitfield || off % 8 != 0 {
                return Err(BtfError::Bitfield(format!("{strukt}.{path}")));
            }
            bits += off;
            id = ty;
        }
        Ok(bits / 8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Build a tiny BTF blob: `struct inner { int a; int b; }`,
    /// `struct outer { long x; union { int u; struct inner in; }; }`.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0inner\0a\0b\0outer\0x\0u\0in\0".to_vec();
        let s = |n: &str| {
            let pat = format!("\0{n}\0");
            strings
                .windows(pat.len())
                .position(|w| w == pat.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut t = Vec::new();
        let mut push = |v: &[u32]| v.iter().for_each(|x| t.extend_from_slice(&x.to_le_bytes()));
        // 1: int
        push(&[s("int"), KIND_INT << 24, 4, 32]);
        // 2: struct inner { a@0, b@32 }
        push(&[s("inner"), (KIND_STRUCT << 24) | 2, 8]);
        push(&[s("a"), 1, 0, s("b"), 1, 32]);
        // 3: anonymous union { u, in }
        push(&[0, (KIND_UNION << 24) | 2, 8]);
        push(&[s("u"), 1, 0, s("in"), 2, 0]);
        // 4: struct outer { x@0, <anon union>@64 }
        push(&[s("outer"), (KIND_STRUCT << 24) | 2, 16]);
        push(&[s("x"), 1, 0, 0, 3, 64]);
        let mut out = Vec::new();
        out.extend_from_slice(&0xeb9fu16.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for v in [
            24u32,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&t);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn counts_function_parameters() {
        let Ok(data) = Btf::from_sys_fs() else { return };
        let btf = Btf::parse(&data).unwrap();
        // The LSM stubs mirror the hooks: inode_unlink(dir, dentry) everywhere,
        // inode_setattr gained `idmap` in 6.3.
        assert_eq!(btf.func_param_count("bpf_lsm_inode_unlink").unwrap(), 2);
        let n = btf.func_param_count("bpf_lsm_inode_setattr").unwrap();
        assert!(n == 2 || n == 3, "{n}");
        assert!(matches!(
            btf.func_param_count("no_such_function_xyz"),
            Err(BtfError::NoFunc(_))
        ));
    }

    #[test]
    fn finds_members_through_anonymous_unions_and_paths() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("outer", "x").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "u").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "in.b").unwrap(), 12);
        assert!(matches!(
            btf.member_offset("outer", "nope"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member_offset("missing", "x"),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert!(matches!(Btf::parse(b"nope"), Err(BtfError::Truncated(_))));
        assert!(matches!(Btf::parse(&[0u8; 32]), Err(BtfError::BadMagic(0))));
        let good = sample();
        for cut in 0..good.len() {
            let _ = Btf::parse(&good[..cut]);
        }
        let mut bad = good.clone();
        bad[24 + 4 + 3] = 0x1f; // kind 31
        assert!(Btf::parse(&bad).is_err());
    }

    #[test]
    fn running_kernel_has_the_fields_we_need() {
        let Ok(data) = Btf::from_sys_fs() else {
            panic!("/sys/kernel/btf/vmlinux is required (kernel built with BTF)");
        };
        let btf = Btf::parse(&data).unwrap();
        let pos = btf.member_offset("file", "f_pos").unwrap();
        let inode = btf.member_offset("file", "f_inode").unwrap();
        assert_ne!(pos, inode);
        assert!(btf.member_offset("file", "f_path.dentry").is_ok());
    }
}
