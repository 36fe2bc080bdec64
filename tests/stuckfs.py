"""A FUSE filesystem that stops answering, for tests of a stuck store (a hung NFS server, a
FUSE daemon that never replies). Spoken over /dev/fuse directly: no libfuse needed, in the
VM guests either.

    stuckfs.py MOUNTPOINT IMAGE CONTROL_DIR

Serves one file, vm.qcow2, with IMAGE's bytes (writes land in memory). While
CONTROL_DIR/hang-reads exists, READ requests get no answer; while CONTROL_DIR/hang-all
exists, nothing but INIT gets one. Deferred requests are answered once the file goes.
CONTROL_DIR/ready is made once mounted.
"""
import ctypes
import errno
import os
import select
import struct
import sys

MNT, IMAGE, CTL = sys.argv[1:4]
DATA = bytearray(open(IMAGE, "rb").read())
ROOT, FILE = 1, 2
NAME = b"vm.qcow2"

IN_HDR = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid extlen pad
OUT_HDR = struct.Struct("<IiQ")
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")

(LOOKUP, FORGET, GETATTR, SETATTR, OPEN, READ, WRITE, STATFS, RELEASE, FSYNC, FLUSH, INIT,
 OPENDIR, READDIR, RELEASEDIR, ACCESS, INTERRUPT, DESTROY, BATCH_FORGET) = (
    1, 2, 3, 4, 14, 15, 16, 17, 18, 20, 25, 26, 27, 28, 29, 34, 36, 38, 42)
NO_REPLY = {FORGET, BATCH_FORGET, INTERRUPT}
FOPEN_DIRECT_IO = 1


def attr(node):
    if node == ROOT:
        return ATTR.pack(ROOT, 0, 0, 0, 0, 0, 0, 0, 0, 0o40755, 2, 0, 0, 0, 4096, 0)
    size = len(DATA)
    return ATTR.pack(FILE, size, (size + 511) // 512, 0, 0, 0, 0, 0, 0, 0o100666, 1, 0, 0, 0,
                     4096, 0)


def entry(node):
    return struct.pack("<QQQQII", node, 0, 1, 1, 0, 0) + attr(node)


def handle(op, node, body):
    """(error, payload) for a request."""
    if op == INIT:
        major, minor, readahead = struct.unpack_from("<III", body)
        return 0, struct.pack("<IIIIHHIIHHII24x", 7, 31, readahead, 0, 16, 12, 131072, 1,
                              32, 0, 0, 0)
    if op == LOOKUP:
        name = body.split(b"\0", 1)[0]
        return (0, entry(FILE)) if node == ROOT and name == NAME else (-errno.ENOENT, b"")
    if op in (GETATTR, SETATTR):
        return 0, struct.pack("<QII", 1, 0, 0) + attr(node)
    if op in (OPEN, OPENDIR):
        return 0, struct.pack("<QII", 1, FOPEN_DIRECT_IO if op == OPEN else 0, 0)
    if op == READ:
        _fh, off, size = struct.unpack_from("<QQI", body)
        return 0, bytes(DATA[off:off + size])
    if op == WRITE:
        _fh, off, size = struct.unpack_from("<QQI", body)
        data = body[40:40 + size]
        if off + size > len(DATA):
            DATA.extend(bytes(off + size - len(DATA)))
        DATA[off:off + size] = data
        return 0, struct.pack("<II", size, 0)
    if op == READDIR:
        _fh, off, _size = struct.unpack_from("<QQI", body)
        if off >= 1:
            return 0, b""
        d = struct.pack("<QQII", FILE, 1, len(NAME), 8) + NAME
        return 0, d + bytes(-len(d) % 8)
    if op == STATFS:
        return 0, struct.pack("<QQQQQIII28x", 1 << 20, 1 << 19, 1 << 19, 1 << 10, 1 << 9, 4096,
                              255, 4096)
    if op in (RELEASE, RELEASEDIR, FLUSH, FSYNC, ACCESS, DESTROY):
        return 0, b""
    return -errno.ENOSYS, b""


def main():
    fd = os.open("/dev/fuse", os.O_RDWR)
    libc = ctypes.CDLL(None, use_errno=True)
    opts = f"fd={fd},rootmode=40000,user_id=0,group_id=0,allow_other".encode()
    if libc.mount(b"stuckfs", MNT.encode(), b"fuse.stuckfs", 0, opts) != 0:
        sys.exit(f"stuckfs: mount: {os.strerror(ctypes.get_errno())}")
    open(os.path.join(CTL, "ready"), "w").close()
    deferred = []
    while True:
        held = os.path.exists(os.path.join(CTL, "hang-all"))
        reads_held = held or os.path.exists(os.path.join(CTL, "hang-reads"))
        if not held:
            # Answer what was held, in order, once its hang file is gone.
            keep = []
            for op, unique, node, body in deferred:
                if op == READ and reads_held:
                    keep.append((op, unique, node, body))
                else:
                    reply(fd, unique, *handle(op, node, body))
            deferred = keep
        r, _, _ = select.select([fd], [], [], 0.05)
        if not r:
            continue
        try:
            buf = os.read(fd, 1 << 20 | 4096)
        except OSError as e:
            if e.errno == errno.ENODEV:  # unmounted
                return
            if e.errno in (errno.EINTR, errno.ENOENT, errno.EAGAIN):
                continue
            raise
        _len, op, unique, node, *_ = IN_HDR.unpack_from(buf)
        body = buf[IN_HDR.size:]
        if op in NO_REPLY:
            continue
        if op != INIT and (held or (op == READ and reads_held)):
            deferred.append((op, unique, node, body))
            continue
        reply(fd, unique, *handle(op, node, body))
        if op == DESTROY:
            return


def reply(fd, unique, err, payload):
    try:
        os.write(fd, OUT_HDR.pack(OUT_HDR.size + len(payload), err, unique) + payload)
    except OSError as e:
        # The caller was interrupted or killed meanwhile: its request is gone.
        if e.errno != errno.ENOENT:
            raise


main()
