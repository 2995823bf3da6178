"""The eBPF assembler and the fast path's option checks (no kernel needed)."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from fabric.api import NetworkContext, NetworkSpec, Node
from fabric.errors import ConfigError
from fabric.net.ebpf import FP, R0, R1, R2, BpfError, Program
from fabric.net.fastpath import build_program, fast_path_from_config


def _insns(code: bytes) -> list[tuple[int, int, int, int]]:
    return [struct.unpack("<BBhi", code[i:i + 8]) for i in range(0, len(code), 8)]


def test_encodings_match_the_kernel_instruction_set() -> None:
    p = Program()
    p.mov(R2, R1)  # BPF_ALU64|BPF_MOV|BPF_X
    p.movi(R0, -1)  # BPF_ALU64|BPF_MOV|BPF_K
    p.ldx(4, R2, R1, 16)  # BPF_LDX|BPF_MEM|BPF_W
    p.stx(1, FP, -8, R2)  # BPF_STX|BPF_MEM|BPF_B
    p.st(8, FP, -16, 0)  # BPF_ST|BPF_MEM|BPF_DW
    p.alui("&", R2, 0xFFFF, bits=32)  # BPF_ALU|BPF_AND|BPF_K
    p.jmpi("!=", R2, 5, "out", bits=32)  # BPF_JMP32|BPF_JNE|BPF_K
    p.call("fib_lookup")
    p.label("out")
    p.exit()
    assert _insns(p.assemble()) == [
        (0xBF, 0x12, 0, 0), (0xB7, 0x00, 0, -1), (0x61, 0x12, 16, 0), (0x73, 0x2A, -8, 0),
        (0x7A, 0x0A, -16, 0), (0x54, 0x02, 0, 0xFFFF), (0x56, 0x02, 1, 5), (0x85, 0, 0, 69),
        (0x95, 0, 0, 0),
    ]


def test_undefined_label_is_an_error() -> None:
    p = Program()
    p.jmpi("==", R0, 0, "nowhere")
    with pytest.raises(BpfError, match="nowhere"):
        p.assemble()


def test_program_matches_its_networks_and_ends_in_pass() -> None:
    code = build_program(IPv4Network("10.244.0.0/16"), IPv4Network("10.244.7.0/24"))
    insns = _insns(code)
    net = struct.unpack("<i", IPv4Address("10.244.0.0").packed)[0]
    local = struct.unpack("<i", IPv4Address("10.244.7.0").packed)[0]
    compares = [(op, imm) for op, _r, _off, imm in insns if op in (0x56, 0x16)]
    assert (0x56, net) in compares and (0x16, local) in compares  # != pods / == local
    assert insns[-2:] == [(0xB7, 0, 0, -1), (0x95, 0, 0, 0)]  # TC_ACT_UNSPEC, exit
    calls = [imm for op, _r, _off, imm in insns if op == 0x85]
    assert calls[-1] == 23 and 69 in calls  # fib_lookup, then redirect
    assert len(build_program(IPv4Network("10.244.0.0/16"))) < len(code)  # no exclusion


def _ctx(tmp_path: Path, config: dict, policy: str = "none") -> NetworkContext:
    spec = NetworkSpec(name="n", cidr=IPv4Network("10.244.0.0/16"), backend="hostgw",
                       backend_config=config, policy=policy)
    return NetworkContext(spec=spec, node=Node("h1", IPv4Address("198.18.0.11"), "eth0", 1500),
                          state_dir=tmp_path)


def test_option_off_by_default_and_on_when_asked(tmp_path: Path) -> None:
    assert fast_path_from_config(_ctx(tmp_path, {})) is None
    fast = fast_path_from_config(_ctx(tmp_path, {"FastPath": True}))
    assert fast is not None and fast.pods == IPv4Network("10.244.0.0/16")
    assert fast.filter_name == "netfabric-n"


def test_option_must_be_a_boolean(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="FastPath must be true or false") as exc:
        fast_path_from_config(_ctx(tmp_path, {"FastPath": "yes"}))
    assert exc.value.field == "FastPath"


def test_option_refused_with_a_netfilter_policy_engine(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="past netfilter") as exc:
        fast_path_from_config(_ctx(tmp_path, {"FastPath": True}, policy="nftables"))
    assert "turn FastPath off" in str(exc.value)


def test_networks_get_distinct_filter_priorities(tmp_path: Path) -> None:
    from fabric.net.fastpath import FastPath

    prios = {FastPath(IPv4Network("10.0.0.0/8"), name=n).prio for n in ("a", "b", "pods")}
    assert len(prios) == 3 and all(0x4000 <= p < 0x5000 for p in prios)


def test_pod_programs_check_the_reverse_path() -> None:
    pods = IPv4Network("10.244.0.0/16")
    routed = _insns(build_program(pods, source_iif=0))
    bridged = _insns(build_program(pods, IPv4Network("10.244.7.0/24"), source_iif=9))
    uplink = _insns(build_program(pods))
    fib_calls = [sum(1 for op, _r, _o, imm in p if op == 0x85 and imm == 69)
                 for p in (routed, bridged, uplink)]
    assert fib_calls == [2, 2, 1]  # reverse lookup, then forward lookup
    assert any(op == 0x5D for op, *_ in routed)  # result != skb->ifindex (register compare)
    assert (0x56, 9) in [(op, imm) for op, _r, _o, imm in bridged]  # != the bridge's index


def test_probe_says_why_when_the_kernel_refuses(monkeypatch) -> None:
    from fabric.net import fastpath
    from fabric.net.ebpf import BpfError

    def refuse(code: bytes, name: str) -> int:
        raise BpfError("bpf(BPF_PROG_LOAD) failed: Function not implemented")

    monkeypatch.setattr(fastpath, "_load", refuse)
    why = fastpath.probe()
    assert why and "eBPF tc fast path" in why and "not implemented" in why
