"""nobody's side of tests/uring.rs: register IMAGE as an io_uring fixed file by MODE and
zero nb_snapshots through it (IOSQE_FIXED_FILE), or write each OFFSET:HEX given after MODE. Raw syscalls: Python has no io_uring.
MODE: files (IORING_REGISTER_FILES, a sparse slot first), update (REGISTER_FILES2 sparse,
then REGISTER_FILES_UPDATE2), sqe (REGISTER_FILES2 sparse, then IORING_OP_FILES_UPDATE)."""
import ctypes, mmap, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(*a):
    r = libc.syscall(*[ctypes.c_long(x) for x in a])
    if r < 0:
        raise OSError(ctypes.get_errno(), "syscall %d" % a[0])
    return r
path, mode = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "files"
fd = os.open(path, os.O_RDWR)
p = ctypes.create_string_buffer(120)
ring = sc(425, 4, ctypes.addressof(p))
v = struct.unpack_from("7I3I", p.raw, 0)
sq_entries, cq_entries = v[0], v[1]
sq = struct.unpack_from("7IIQ", p.raw, 40)
cq = struct.unpack_from("7IIQ", p.raw, 80)
sqm = mmap.mmap(ring, sq[6] + sq_entries * 4, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
cqm = mmap.mmap(ring, cq[5] + cq_entries * 16, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0x8000000)
sqes = mmap.mmap(ring, sq_entries * 64, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0x10000000)
if mode == "files":
    # IORING_REGISTER_FILES: a sparse slot first, the image at slot 1.
    fds = (ctypes.c_int * 2)(-1, fd)
    sc(427, ring, 2, ctypes.addressof(fds), 2)
    slot = 1
else:
    # IORING_REGISTER_FILES2 with 4 sparse slots (no fds: nothing to report yet) ...
    reg = struct.pack("IIQQQ", 4, 1, 0, 0, 0)  # IORING_RSRC_REGISTER_SPARSE
    rb = ctypes.create_string_buffer(reg, len(reg))
    sc(427, ring, 13, ctypes.addressof(rb), len(reg))
    fds = (ctypes.c_int * 1)(fd)
    slot = 3 if mode == "update" else 2
    if mode == "update":
        # ... then IORING_REGISTER_FILES_UPDATE2 puts the image at slot 3.
        up = struct.pack("IIQQII", slot, 0, ctypes.addressof(fds), 0, 1, 0)
        ub = ctypes.create_string_buffer(up, len(up))
        sc(427, ring, 14, ctypes.addressof(ub), len(up))


def submit(sqe):
    """One SQE through the ring, waited for; its CQE's result."""
    sqes[0:64] = sqe + bytes(64 - len(sqe))
    mask = struct.unpack_from("I", sqm, sq[2])[0]
    tail = struct.unpack_from("I", sqm, sq[1])[0]
    struct.pack_into("I", sqm, sq[6] + (tail & mask) * 4, 0)
    struct.pack_into("I", sqm, sq[1], tail + 1)
    sc(426, ring, 1, 1, 1, 0, 0)
    head = struct.unpack_from("I", cqm, cq[0])[0]
    cmask = struct.unpack_from("I", cqm, cq[2])[0]
    res = struct.unpack_from("Qii", cqm, cq[5] + (head & cmask) * 16)[1]
    struct.pack_into("I", cqm, cq[0], head + 1)
    return res


if mode == "sqe":
    # ... or IORING_OP_FILES_UPDATE (20) through the ring itself puts it at slot 2.
    r = submit(struct.pack("BBHiQQII", 20, 0, 0, -1, slot, ctypes.addressof(fds), 1, 0))
    if r != 1:
        sys.exit("IORING_OP_FILES_UPDATE: %d" % r)
# IORING_OP_WRITE (23), IOSQE_FIXED_FILE, each OFFSET:HEX after MODE; by default
# nb_snapshots (offset 60) := 0.
ok = True
for w in sys.argv[3:] or ["60:00000000"]:
    off, data = w.split(":")
    buf = ctypes.create_string_buffer(bytes.fromhex(data), len(data) // 2)
    res = submit(struct.pack("BBHiQQII", 23, 1, 0, slot, int(off), ctypes.addressof(buf), len(buf), 0))
    print(res)
    ok = ok and res == len(buf)
sys.exit(0 if ok else 1)
