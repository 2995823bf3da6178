"""A desired nftables state (tables, sets, maps, counters, chains) and the batch between two.

The engine keeps the state it last applied; each change becomes one ``nft -j -f -``
run holding only the difference, so named counters survive and there is never a
moment without rules (nft applies a batch as one kernel transaction).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping
from typing import Any

import attrs

from fabric.errors import PolicyError

__all__ = ["SetDef", "ChainDef", "NftState", "diff_batch", "delete_batch", "run_nft",
           "list_counters", "nft_binary"]

Key = tuple[str, str]  # (family, name) of an object in a table of that family


@attrs.frozen
class SetDef:
    type: str  # "ipv4_addr" / "ifname"
    elements: frozenset[Any] = frozenset()  # str address/name or ("prefix", addr, len)
    interval: bool = False
    verdicts: tuple[tuple[str, str], ...] | None = None  # a verdict map: (key, jump target)


@attrs.frozen
class ChainDef:
    rules: tuple[str, ...] = ()  # JSON-encoded expression lists
    hook: tuple[str, str, int] | None = None  # (type, hook, priority) for base chains


@attrs.define
class NftState:
    """Everything in the network's tables, per family (``inet`` and ``bridge``)."""

    table: str
    families: tuple[str, ...] = ("inet", "bridge")
    sets: dict[Key, SetDef] = attrs.field(factory=dict)
    counters: set[Key] = attrs.field(factory=set)
    chains: dict[Key, ChainDef] = attrs.field(factory=dict)

    def rule(self, family: str, chain: str, expr: list[dict[str, Any]]) -> None:
        c = self.chains.setdefault((family, chain), ChainDef())
        self.chains[(family, chain)] = attrs.evolve(c, rules=(*c.rules, json.dumps(expr)))


def _elem(e: Any) -> Any:
    if isinstance(e, tuple) and e[0] == "prefix":
        return {"prefix": {"addr": e[1], "len": e[2]}}
    return e


def _set_obj(st: NftState, key: Key, sd: SetDef, with_elems: bool = True) -> dict[str, Any]:
    obj: dict[str, Any] = {"family": key[0], "table": st.table, "name": key[1], "type": sd.type}
    if sd.verdicts is not None:
        obj["map"] = "verdict"
        if with_elems and sd.verdicts:
            obj["elem"] = [[k, {"jump": {"target": t}}] for k, t in sd.verdicts]
        return {"map": obj}
    if sd.interval:
        obj["flags"] = ["interval"]
    if with_elems and sd.elements:
        obj["elem"] = [_elem(e) for e in sorted(sd.elements, key=str)]
    return {"set": obj}


def _elements(st: NftState, key: Key, elems: list[Any]) -> dict[str, Any]:
    return {"element": {"family": key[0], "table": st.table, "name": key[1], "elem": elems}}


def _chain_obj(st: NftState, key: Key, cd: ChainDef) -> dict[str, Any]:
    obj: dict[str, Any] = {"family": key[0], "table": st.table, "name": key[1]}
    if cd.hook:
        obj.update(type=cd.hook[0], hook=cd.hook[1], prio=cd.hook[2], policy="accept")
    return {"chain": obj}


def _rules(st: NftState, key: Key, cd: ChainDef) -> list[dict[str, Any]]:
    return [{"add": {"rule": {"family": key[0], "table": st.table, "chain": key[1],
                              "expr": json.loads(r)}}} for r in cd.rules]


def _set_deltas(old: NftState, new: NftState, maps: bool) -> list[dict[str, Any]]:
    batch: list[dict[str, Any]] = []
    for key, sd in sorted(new.sets.items()):
        if (sd.verdicts is not None) != maps:
            continue
        prev = old.sets.get(key)
        if prev is None:
            batch.append({"add": _set_obj(new, key, sd)})
            continue
        if (prev.type, prev.interval, prev.verdicts is None) != (
                sd.type, sd.interval, sd.verdicts is None):
            raise PolicyError(f"nft set {key[1]} changed its type", fix="restart the agent")
        if maps:
            p, n = dict(prev.verdicts or ()), dict(sd.verdicts or ())
            stale = [k for k in p if n.get(k) != p[k]]
            fresh = [[k, {"jump": {"target": t}}] for k, t in n.items() if p.get(k) != t]
            if stale:
                batch.append({"delete": _elements(new, key, stale)})
            if fresh:
                batch.append({"add": _elements(new, key, fresh)})
            continue
        if prev.elements == sd.elements:
            continue
        gone, added = prev.elements - sd.elements, sd.elements - prev.elements
        if sd.interval and gone:  # merged ranges cannot be deleted piecewise: re-fill
            batch.append({"flush": {"set": {"family": key[0], "table": new.table,
                                            "name": key[1]}}})
            added = sd.elements
        elif gone:
            batch.append({"delete": _elements(new, key, [_elem(e) for e in gone])})
        if added:
            batch.append({"add": _elements(new, key, [_elem(e) for e in sorted(added, key=str)])})
    return batch


def diff_batch(old: NftState | None, new: NftState) -> list[dict[str, Any]]:
    """Commands turning ``old`` (None: unknown, rebuild) into ``new``, for one transaction."""
    batch: list[dict[str, Any]] = []
    if old is None:
        for fam in new.families:  # replace whatever is there, in the same transaction
            t = {"table": {"family": fam, "name": new.table}}
            batch += [{"add": t}, {"delete": t}]
        old = NftState(new.table, new.families)
    for fam in new.families:
        batch.append({"add": {"table": {"family": fam, "name": new.table}}})
    for key in sorted(new.counters - old.counters):
        batch.append({"add": {"counter": {"family": key[0], "table": new.table, "name": key[1]}}})
    batch += _set_deltas(old, new, maps=False)
    for key, cd in sorted(new.chains.items()):  # new chains empty first: maps jump to them
        if key not in old.chains:
            batch.append({"add": _chain_obj(new, key, cd)})
    batch += _set_deltas(old, new, maps=True)
    for key, cd in sorted(new.chains.items()):
        prev = old.chains.get(key)
        if prev is None:
            batch += _rules(new, key, cd)
        elif prev.rules != cd.rules:
            batch.append({"flush": {"chain": {"family": key[0], "table": new.table,
                                              "name": key[1]}}})
            batch += _rules(new, key, cd)
    # removals last, once nothing refers to them
    for key in sorted(set(old.chains) - set(new.chains)):
        c = {"chain": {"family": key[0], "table": new.table, "name": key[1]}}
        batch += [{"flush": c}, {"delete": c}]
    for key in sorted(set(old.sets) - set(new.sets)):
        kind = "map" if old.sets[key].verdicts is not None else "set"
        batch.append({"delete": {kind: {"family": key[0], "table": new.table, "name": key[1]}}})
    for key in sorted(old.counters - new.counters):
        batch.append({"delete": {"counter": {"family": key[0], "table": new.table,
                                             "name": key[1]}}})
    return batch


def delete_batch(table: str, families: tuple[str, ...] = ("inet", "bridge")) -> list[dict]:
    out: list[dict] = []
    for fam in families:
        t = {"table": {"family": fam, "name": table}}
        out += [{"add": t}, {"delete": t}]
    return out


def nft_binary() -> str:
    nft = shutil.which("nft")
    if nft is None:
        raise PolicyError("nft is not installed; the nftables policy engine needs it",
                          fix="apt-get install nftables, or use policy 'none'")
    return nft


def run_nft(batch: list[dict[str, Any]], args: tuple[str, ...] = ()) -> str:
    """Apply ``batch`` in one transaction; raise PolicyError (nothing applied) on failure."""
    nft = nft_binary()
    try:
        res = subprocess.run([nft, "-j", *args, "-f", "-"],
                             input=json.dumps({"nftables": batch}),
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PolicyError(f"running nft failed: {exc}", fix="check nftables") from exc
    if res.returncode != 0:
        msg = " ".join(line.strip() for line in res.stderr.splitlines() if "Error" in line)
        raise PolicyError(f"nft rejected the rules: {msg or res.stderr.strip()[:500]}",
                          fix="the previous rules are still in force; see the agent log")
    return res.stdout


def list_counters(table: str, family: str = "inet") -> dict[str, Mapping[str, int]]:
    """Named counters of a table: name -> {packets, bytes}; {} if the table is absent."""
    nft = nft_binary()
    res = subprocess.run([nft, "-j", "list", "counters", "table", family, table],
                         capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        return {}
    out: dict[str, Mapping[str, int]] = {}
    for item in json.loads(res.stdout).get("nftables", []):
        c = item.get("counter")
        if c and c.get("table") == table:
            out[c["name"]] = {"packets": int(c.get("packets", 0)),
                              "bytes": int(c.get("bytes", 0))}
    return out
