//! Load stage: resolve every kernel struct offset the programs read from the running kernel's
//! BTF, with name fallbacks across versions; a missing group disables its hooks, loudly.

use snapmon_common::{valid, KernelOffsets};

use super::btf::Btf;

/// What could not be resolved, and which hook family goes dark because of it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Missing {
    pub group: &'static str,
    pub field: String,
    pub effect: &'static str,
}

/// First candidate `(struct, member path)` that resolves.
fn first(btf: &Btf, cands: &[(&str, &str)]) -> Result<u32, String> {
    let mut last = String::new();
    for (s, m) in cands {
        match btf.member_offset(s, m) {
            Ok(o) => return Ok(o),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// `inode_setattr(dentry, attr)` before 6.3, `(idmap, dentry, attr)` since: count the BPF LSM
/// stub's parameters.
fn setattr_dentry_arg(btf: &Btf) -> Result<u32, String> {
    match btf.func_param_count("bpf_lsm_inode_setattr") {
        Ok(2) => Ok(0),
        Ok(3) => Ok(1),
        Ok(n) => Err(format!("bpf_lsm_inode_setattr has {n} parameters")),
        Err(e) => Err(e.to_string()),
    }
}

/// The two shapes of the ring's registered-file table, newest first, as
/// `(io_kiocb.ctx, slot count, slot array, slots are nodes, io_rsrc_node.file_ptr)`:
/// 6.13+ `ctx->file_table.data.{nr, nodes}` of `io_rsrc_node *` (whose `file_ptr` is the
/// tagged file); before, `ctx->nr_user_files` and `ctx->file_table.files`, an array of
/// `io_fixed_file` that are the tagged file pointer itself.
const FIXED_FILE_TABLES: &[(&str, &str, Option<&str>)] = &[
    (
        "file_table.data.nr",
        "file_table.data.nodes",
        Some("file_ptr"),
    ),
    ("nr_user_files", "file_table.files", None),
];

fn fixed_file_table(btf: &Btf) -> Result<(u32, u32, u32, u32, u32), String> {
    let ctx = first(btf, &[("io_kiocb", "ctx")])?;
    let mut last = String::new();
    for (nr, slots, node_file) in FIXED_FILE_TABLES {
        let r = (|| -> Result<_, String> {
            let nr = first(btf, &[("io_ring_ctx", nr)])?;
            let slots = first(btf, &[("io_ring_ctx", slots)])?;
            Ok(match node_file {
                Some(m) => (ctx, nr, slots, 1, first(btf, &[("io_rsrc_node", m)])?),
                // `io_fixed_file` is one `unsigned long file_ptr`: the slot is 8 bytes.
                None => {
                    if first(btf, &[("io_fixed_file", "file_ptr")])? != 0 {
                        return Err("io_fixed_file.file_ptr is not its only field".into());
                    }
                    (ctx, nr, slots, 0, 0)
                }
            })
        })();
        match r {
            Ok(t) => return Ok(t),
            Err(e) => last = e,
        }
    }
    Err(last)
}

pub fn resolve(btf: &Btf, sc_args: u32, sc_ret: u32) -> (KernelOffsets, Vec<Missing>) {
    let mut o = KernelOffsets {
        sc_args,
        sc_ret,
        ..Default::default()
    };
    let mut missing = Vec::new();
    let mut group = |name: &'static str,
                     bit: u32,
                     effect: &'static str,
                     fields: &mut [(&mut u32, &[(&str, &str)])]| {
        let mut ok = true;
        for (slot, cands) in fields.iter_mut() {
            match first(btf, cands) {
                Ok(v) => **slot = v,
                Err(e) => {
                    ok = false;
                    missing.push(Missing {
                        group: name,
                        field: e,
                        effect,
                    });
                }
            }
        }
        if ok {
            bit
        } else {
            0
        }
    };
    let mut v = 0;
    v |= group(
        "files",
        valid::FILES,
        "no file hooks: writes, opens, ioctls and namespace operations are not observed",
        &mut [
            (&mut o.task_files, &[("task_struct", "files")]),
            (&mut o.files_fdt, &[("files_struct", "fdt")]),
            (&mut o.fdt_max_fds, &[("fdtable", "max_fds")]),
            (&mut o.fdt_fd, &[("fdtable", "fd")]),
            (&mut o.file_inode, &[("file", "f_inode")]),
            (&mut o.file_pos, &[("file", "f_pos")]),
            (&mut o.file_flags, &[("file", "f_flags")]),
            (&mut o.file_mode, &[("file", "f_mode")]),
            (
                &mut o.file_dentry,
                &[("file", "f_path.dentry"), ("file", "__f_path.dentry")],
            ),
            (&mut o.inode_ino, &[("inode", "i_ino")]),
            (&mut o.inode_sb, &[("inode", "i_sb")]),
            (&mut o.inode_size, &[("inode", "i_size")]),
            (&mut o.inode_mode, &[("inode", "i_mode")]),
            (&mut o.inode_uid, &[("inode", "i_uid")]),
            (&mut o.sb_dev, &[("super_block", "s_dev")]),
            (&mut o.dentry_parent, &[("dentry", "d_parent")]),
            (&mut o.dentry_inode, &[("dentry", "d_inode")]),
            (&mut o.task_fs, &[("task_struct", "fs")]),
            (&mut o.fs_pwd_dentry, &[("fs_struct", "pwd.dentry")]),
        ],
    );
    v |= group(
        "process",
        valid::PROC,
        "no process events: lineage falls back to /proc snapshots",
        &mut [
            (&mut o.task_tgid, &[("task_struct", "tgid")]),
            (&mut o.task_pid, &[("task_struct", "pid")]),
            (&mut o.task_real_parent, &[("task_struct", "real_parent")]),
            (&mut o.task_cred, &[("task_struct", "cred")]),
            (
                &mut o.task_start_boottime,
                &[
                    ("task_struct", "start_boottime"),
                    ("task_struct", "real_start_time"),
                ],
            ),
            (&mut o.task_exit_code, &[("task_struct", "exit_code")]),
            (&mut o.cred_uid, &[("cred", "uid")]),
            (&mut o.cred_euid, &[("cred", "euid")]),
            (&mut o.cred_gid, &[("cred", "gid")]),
            (&mut o.bprm_filename, &[("linux_binprm", "filename")]),
            (&mut o.bprm_file, &[("linux_binprm", "file")]),
        ],
    );
    v |= group(
        "args",
        valid::ARGS,
        "process arguments are not captured at exec",
        &mut [
            (&mut o.task_mm, &[("task_struct", "mm")]),
            (&mut o.mm_arg_start, &[("mm_struct", "arg_start")]),
            (&mut o.mm_arg_end, &[("mm_struct", "arg_end")]),
            (&mut o.mm_exe_file, &[("mm_struct", "exe_file")]),
        ],
    );
    v |= group(
        "io_uring",
        valid::IO_URING,
        "io_uring writes are not observed",
        &mut [
            (&mut o.req_opcode, &[("io_kiocb", "opcode")]),
            (&mut o.req_flags, &[("io_kiocb", "flags")]),
            (&mut o.req_fd, &[("io_kiocb", "cqe.fd")]),
            (&mut o.req_file, &[("io_kiocb", "file")]),
        ],
    );
    v |= group(
        "vfs",
        valid::VFS,
        "the VFS write hook cannot tell syscall writes apart and stays idle",
        &mut [(&mut o.regs_orig_ax, &[("pt_regs", "orig_ax")])],
    );
    v |= group(
        "compat",
        valid::COMPAT,
        "32-bit (ia32) syscalls are not told apart: on the tracepoint backend their writes and namespace operations go unseen",
        &mut [(&mut o.task_ti_status, &[("task_struct", "thread_info.status")])],
    );
    v |= group(
        "regs_args",
        valid::REGS_ARGS,
        "--syscall-hook raw cannot read syscall arguments and refuses to start",
        &mut [
            (&mut o.regs_di, &[("pt_regs", "di")]),
            (&mut o.regs_si, &[("pt_regs", "si")]),
            (&mut o.regs_dx, &[("pt_regs", "dx")]),
            (&mut o.regs_r10, &[("pt_regs", "r10")]),
            (&mut o.regs_r8, &[("pt_regs", "r8")]),
            (&mut o.regs_r9, &[("pt_regs", "r9")]),
            (&mut o.regs_bx, &[("pt_regs", "bx")]),
            (&mut o.regs_cx, &[("pt_regs", "cx")]),
            (&mut o.regs_bp, &[("pt_regs", "bp")]),
        ],
    );
    v |= group(
        "rdev",
        valid::RDEV,
        "a second node (mknod) of a loop device over a watched image is not recognised",
        &mut [(&mut o.inode_rdev, &[("inode", "i_rdev")])],
    );
    v |= group(
        "generation",
        valid::GENERATION,
        "a watched file freed unseen (deleted in another mount namespace, through a bind mount or a symlinked directory) leaves its inode number watched: a later file with that number is judged as the old one",
        &mut [(&mut o.inode_generation, &[("inode", "i_generation")])],
    );
    v |= group(
        "sb_magic",
        valid::SB_MAGIC,
        "a store written through an overlay in another mount namespace is not seen",
        &mut [(&mut o.sb_magic, &[("super_block", "s_magic")])],
    );
    // io_rw / io_sync live in io_kiocb's command area (`cmd`, at the start of the request).
    if v & valid::IO_URING != 0 {
        let cmd = first(btf, &[("io_kiocb", "cmd")]).unwrap_or(0);
        let rw = |m: &str| first(btf, &[("io_rw", m)]);
        let sync = |m: &str| first(btf, &[("io_sync", m)]);
        match (
            rw("kiocb.ki_pos"),
            rw("len"),
            rw("addr"),
            sync("off"),
            sync("len"),
            sync("mode"),
        ) {
            (Ok(pos), Ok(len), Ok(addr), Ok(soff), Ok(slen), Ok(smode)) => {
                o.req_rw_pos = cmd + pos;
                o.req_rw_len = cmd + len;
                o.req_rw_addr = cmd + addr;
                o.req_sync_off = cmd + soff;
                o.req_sync_len = cmd + slen;
                o.req_sync_mode = cmd + smode;
            }
            _ => {
                v &= !valid::IO_URING;
                missing.push(Missing {
                    group: "io_uring",
                    field: "io_rw/io_sync layout".into(),
                    effect: "io_uring writes are not observed",
                });
            }
        }
    }
    // Namespace requests share the command area too; the paths are kernel copies.
    if v & valid::IO_URING != 0 {
        let cmd = first(btf, &[("io_kiocb", "cmd")]).unwrap_or(0);
        let all = |fields: &mut [(&mut u32, &str, &str)]| -> Result<(), String> {
            for (slot, st, m) in fields.iter_mut() {
                **slot = first(btf, &[(*st, *m)])?;
            }
            Ok(())
        };
        let (mut a, mut b, mut c, mut d, mut e) = (0, 0, 0, 0, 0);
        let (mut f, mut g, mut h, mut i, mut j) = (0, 0, 0, 0, 0);
        let (mut k, mut l, mut m, mut n, mut p, mut q) = (0, 0, 0, 0, 0, 0);
        let r = all(&mut [
            (&mut a, "io_rename", "old_dfd"),
            (&mut b, "io_rename", "new_dfd"),
            (&mut c, "io_rename", "oldpath"),
            (&mut d, "io_rename", "newpath"),
            (&mut e, "io_rename", "flags"),
            (&mut f, "io_link", "old_dfd"),
            (&mut g, "io_link", "new_dfd"),
            (&mut h, "io_link", "oldpath"),
            (&mut i, "io_link", "newpath"),
            (&mut j, "io_link", "flags"),
            (&mut k, "io_unlink", "dfd"),
            (&mut l, "io_unlink", "flags"),
            (&mut m, "io_unlink", "filename"),
            (&mut n, "io_mkdir", "dfd"),
            (&mut p, "io_mkdir", "filename"),
            (&mut q, "filename", "name"),
        ]);
        match r {
            Ok(()) => {
                o.uring_ren_odfd = cmd + a;
                o.uring_ren_ndfd = cmd + b;
                o.uring_ren_opath = cmd + c;
                o.uring_ren_npath = cmd + d;
                o.uring_ren_flags = cmd + e;
                o.uring_lnk_odfd = cmd + f;
                o.uring_lnk_ndfd = cmd + g;
                o.uring_lnk_opath = cmd + h;
                o.uring_lnk_npath = cmd + i;
                o.uring_lnk_flags = cmd + j;
                o.uring_unl_dfd = cmd + k;
                o.uring_unl_flags = cmd + l;
                o.uring_unl_path = cmd + m;
                o.uring_mkd_dfd = cmd + n;
                o.uring_mkd_path = cmd + p;
                o.filename_name = q;
                v |= valid::IO_URING_NS;
            }
            Err(e) => missing.push(Missing {
                group: "io_uring_ns",
                field: e,
                effect: "io_uring rename/unlink/link/mkdir requests are not observed",
            }),
        }
    }
    // IORING_OP_FILES_UPDATE's prepped arguments, in the same command area.
    if v & valid::IO_URING != 0 {
        let cmd = first(btf, &[("io_kiocb", "cmd")]).unwrap_or(0);
        let f = |m: &str| first(btf, &[("io_rsrc_update", m)]);
        match (f("arg"), f("nr_args"), f("offset")) {
            (Ok(arg), Ok(nr), Ok(off)) => {
                o.uring_upd_arg = cmd + arg;
                o.uring_upd_nr = cmd + nr;
                o.uring_upd_off = cmd + off;
                v |= valid::IO_URING_UPD;
            }
            (arg, nr, off) => missing.push(Missing {
                group: "io_uring_upd",
                field: [arg, nr, off]
                    .into_iter()
                    .find_map(|r| r.err())
                    .unwrap_or_default(),
                effect:
                    "fixed files added through the ring (IORING_OP_FILES_UPDATE) are not reported",
            }),
        }
    }
    // The ring's registered-file table, for requests naming a slot (`IOSQE_FIXED_FILE`).
    if v & valid::IO_URING != 0 {
        match fixed_file_table(btf) {
            Ok(t) => {
                (
                    o.req_ctx,
                    o.uring_ft_nr,
                    o.uring_ft_slots,
                    o.uring_ft_nodes,
                    o.uring_node_file,
                ) = t;
                v |= valid::IO_URING_FIXED;
            }
            Err(e) => missing.push(Missing {
                group: "io_uring_fixed",
                field: e,
                effect: "io_uring writes through registered (fixed) files are not judged one by one: their registration is reported instead (SM-U001)",
            }),
        }
    }
    // LSM namespace observation: entry names, the syscall's first argument, setattr's iattr.
    if v & valid::VFS != 0 {
        let r = (|| -> Result<(), String> {
            o.dentry_name = first(btf, &[("dentry", "d_name.name")])?;
            o.regs_di = first(btf, &[("pt_regs", "di")])?;
            o.iattr_valid = first(btf, &[("iattr", "ia_valid")])?;
            o.iattr_mode = first(btf, &[("iattr", "ia_mode")])?;
            o.iattr_uid = first(btf, &[("iattr", "ia_uid")])?;
            o.iattr_gid = first(btf, &[("iattr", "ia_gid")])?;
            o.setattr_dentry_arg = setattr_dentry_arg(btf)?;
            Ok(())
        })();
        match r {
            Ok(()) => v |= valid::VFS_NS,
            Err(e) => missing.push(Missing {
                group: "vfs_ns",
                field: e,
                effect: "the LSM hooks do not report namespace operations the syscall hooks miss",
            }),
        }
    }
    // The cwd walk is part of the files group; keep a separate bit for reporting.
    if v & valid::FILES != 0 {
        v |= valid::CWD;
    }
    o.valid = v;
    (o, missing)
}

/// Offset of field `name` in a tracepoint `format` file (`field:... name; offset:N; ...`).
pub fn format_field_offset(format: &str, name: &str) -> Option<u32> {
    format.lines().find_map(|l| {
        let l = l.trim();
        let decl = l.strip_prefix("field:")?.split(';').next()?;
        let ident = decl.split_whitespace().last()?.split('[').next()?;
        if ident != name {
            return None;
        }
        let off = l
            .split(';')
            .find_map(|p| p.trim().strip_prefix("offset:"))?;
        off.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PWRITE_FORMAT: &str = "name: sys_enter_pwrite64\nID: 700\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\
        \tfield:unsigned int fd;\toffset:16;\tsize:8;\tsigned:0;\n\
        \tfield:const char * buf;\toffset:24;\tsize:8;\tsigned:0;\n";

    #[test]
    fn parses_tracepoint_format_offsets() {
        assert_eq!(format_field_offset(PWRITE_FORMAT, "fd"), Some(16));
        assert_eq!(format_field_offset(PWRITE_FORMAT, "buf"), Some(24));
        assert_eq!(format_field_offset(PWRITE_FORMAT, "__syscall_nr"), Some(8));
        assert_eq!(format_field_offset(PWRITE_FORMAT, "missing"), None);
    }

    #[test]
    fn resolves_all_groups_on_the_running_kernel() {
        let data = Btf::from_sys_fs().expect("kernel BTF at /sys/kernel/btf/vmlinux");
        let btf = Btf::parse(&data).unwrap();
        let (o, missing) = resolve(&btf, 16, 16);
        assert!(missing.is_empty(), "unresolved: {missing:?}");
        assert_eq!(o.valid & valid::FILES, valid::FILES);
        assert_eq!(o.valid & valid::IO_URING, valid::IO_URING);
        assert_eq!(o.valid & valid::COMPAT, valid::COMPAT);
        // One of the two registered-file table shapes, and the ring within the request.
        assert_eq!(o.valid & valid::IO_URING_FIXED, valid::IO_URING_FIXED);
        assert!(o.req_ctx > 0 && o.uring_ft_slots > 0 && o.uring_ft_nr != o.uring_ft_slots);
        assert_eq!(o.valid & valid::REGS_ARGS, valid::REGS_ARGS);
        assert_ne!(o.regs_r10, o.regs_dx);
        assert_ne!(o.file_inode, o.file_pos);
        assert!(o.task_files > 0 && o.task_tgid > 0);
    }
}
