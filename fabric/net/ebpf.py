"""A minimal eBPF assembler and loader (no clang, no libbpf): enough for the
small tc programs of ``fabric.net.fastpath``.

Instructions are encoded as the kernel's ``struct bpf_insn`` (opcode, dst/src
registers, 16-bit offset, 32-bit immediate); jumps are written with labels and
resolved by :meth:`Program.assemble`. :func:`load_sched_cls` loads a program with
``bpf(BPF_PROG_LOAD)`` and returns its file descriptor, or raises
:class:`BpfError` carrying the verifier's log.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import struct

__all__ = ["BpfError", "Program", "load_sched_cls", "HELPERS", "R0", "R1", "R2", "R3", "R4",
           "R5", "R6", "R7", "R8", "R9", "FP"]

R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, FP = range(11)

# helper function ids (include/uapi/linux/bpf.h, ___BPF_FUNC_MAPPER order)
HELPERS = {"skb_store_bytes": 9, "l3_csum_replace": 10, "redirect": 23,
           "skb_load_bytes": 26, "fib_lookup": 69}

_SIZE = {1: 0x10, 2: 0x08, 4: 0x00, 8: 0x18}  # BPF_B, BPF_H, BPF_W, BPF_DW
_JMP = {"==": 0x10, "!=": 0x50, ">": 0x20, ">=": 0x30, "<": 0xA0, "<=": 0xB0}
_ALU = {"+": 0x00, "-": 0x10, "&": 0x50, "|": 0x40, "<<": 0x60, ">>": 0x70, "mov": 0xB0}
_SYS_BPF = {"x86_64": 321, "aarch64": 280}
_BPF_PROG_LOAD = 5
_BPF_PROG_TYPE_SCHED_CLS = 3


class BpfError(Exception):
    """Loading a program failed; ``log`` holds the verifier output, if any."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log


class Program:
    """An instruction list with labels; each method appends one instruction."""

    def __init__(self) -> None:
        self._insns: list[tuple[int, int, int, int | str, int]] = []
        self._labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self._labels[name] = len(self._insns)

    def _emit(self, op: int, dst: int = 0, src: int = 0, off: int | str = 0, imm: int = 0) -> None:
        self._insns.append((op, dst, src, off, imm))

    def mov(self, dst: int, src: int) -> None:
        self._emit(0x07 | 0x08 | _ALU["mov"], dst, src)  # 64-bit register move

    def movi(self, dst: int, imm: int) -> None:
        self._emit(0x07 | _ALU["mov"], dst, imm=imm)

    def alui(self, op: str, dst: int, imm: int, *, bits: int = 64) -> None:
        self._emit((0x07 if bits == 64 else 0x04) | _ALU[op], dst, imm=imm)

    def ldx(self, size: int, dst: int, src: int, off: int) -> None:
        self._emit(0x61 | _SIZE[size], dst, src, off)

    def stx(self, size: int, dst: int, off: int, src: int) -> None:
        self._emit(0x63 | _SIZE[size], dst, src, off)

    def st(self, size: int, dst: int, off: int, imm: int) -> None:
        self._emit(0x62 | _SIZE[size], dst, off=off, imm=imm)

    def jmpi(self, cond: str, dst: int, imm: int, target: str, *, bits: int = 64) -> None:
        self._emit((0x05 if bits == 64 else 0x06) | _JMP[cond], dst, off=target, imm=imm)

    def jmp_reg(self, cond: str, dst: int, src: int, target: str) -> None:
        self._emit(0x05 | 0x08 | _JMP[cond], dst, src, off=target)

    def call(self, helper: str) -> None:
        self._emit(0x85, imm=HELPERS[helper])

    def exit(self) -> None:
        self._emit(0x95)

    def assemble(self) -> bytes:
        out = bytearray()
        for pc, (op, dst, src, off, imm) in enumerate(self._insns):
            if isinstance(off, str):
                if off not in self._labels:
                    raise BpfError(f"undefined label {off!r}")
                off = self._labels[off] - pc - 1
            out += struct.pack("<BBhi", op, (src << 4) | dst, off, imm)
        return bytes(out)


class _ProgLoadAttr(ctypes.Structure):
    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32),
                ("insns", ctypes.c_uint64), ("license", ctypes.c_uint64),
                ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32),
                ("prog_flags", ctypes.c_uint32), ("prog_name", ctypes.c_char * 16)]


def load_sched_cls(code: bytes, name: str) -> int:
    """Load ``code`` as a tc classifier (sched_cls) program; returns its fd."""
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        raise BpfError(f"eBPF loading is not implemented for {platform.machine()}")
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    insns = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(b"Dual MIT/GPL")
    log = ctypes.create_string_buffer(1 << 16)
    attr = _ProgLoadAttr(prog_type=_BPF_PROG_TYPE_SCHED_CLS, insn_cnt=len(code) // 8,
                         insns=ctypes.addressof(insns), license=ctypes.addressof(lic),
                         prog_name=name.encode()[:15])
    for level in (0, 1):  # first without a log (fast); again with one to explain a refusal
        attr.log_level, attr.log_size = level, len(log) if level else 0
        attr.log_buf = ctypes.addressof(log) if level else 0
        fd = libc.syscall(nr, _BPF_PROG_LOAD, ctypes.byref(attr), ctypes.sizeof(attr))
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err in (1, 38):  # EPERM, ENOSYS: no point in asking the verifier
            raise BpfError(f"bpf(BPF_PROG_LOAD) failed: {os.strerror(err)}")
    raise BpfError(f"the kernel refused the eBPF program {name}: {os.strerror(err)}",
                   log.value.decode(errors="replace"))
