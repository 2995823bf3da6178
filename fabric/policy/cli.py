"""`fabric policy apply -f FILE | list | delete NAME | explain POD | label POD K=V | metrics`.

Targets: ``--state-dir DIR`` / ``--socket PATH`` (as `fabric status`; default
/run/netfabric/agent.sock) or ``--lab NAME`` with
``--host hN`` (repeatable; default every host of the lab). Files are validated here
first, so a bad policy never reaches an agent.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from fabric.errors import ConfigError, FabricError, NotFound
from fabric.targets import DEFAULT_STATE_DIR, add_agent_options, agent_socket, lab_targets

__all__ = ["register", "targets"]

def register(subparsers: Any) -> None:
    pol = subparsers.add_parser("policy", help="NetworkPolicy: apply, list, delete, explain")
    sub = pol.add_subparsers(dest="policy_command", metavar="POLICY_COMMAND",
                             parser_class=type(pol))
    sub.required = True

    def common(p: argparse.ArgumentParser) -> None:
        add_agent_options(p)
        p.add_argument("--lab", help="target hosts of this lab instead of --socket/--state-dir")
        p.add_argument("--host", action="append", default=[],
                       help="lab host (repeatable; default: every host of the lab)")
        p.add_argument("--network", default="", help="network (when an agent serves several)")
        p.add_argument("--json", action="store_true", help="print JSON")

    ap = sub.add_parser("apply", help="validate and apply NetworkPolicy/Namespace documents")
    ap.add_argument("-f", "--file", required=True, help="YAML or JSON file (several documents)")
    common(ap)
    ap.set_defaults(func=cmd_apply)
    ls = sub.add_parser("list", help="policies and namespaces in force")
    common(ls)
    ls.set_defaults(func=cmd_list)
    de = sub.add_parser("delete", help="delete a policy: NAME or NAMESPACE/NAME")
    de.add_argument("name")
    de.add_argument("--namespace-object", action="store_true",
                    help="NAME is a Namespace document, not a policy")
    common(de)
    de.set_defaults(func=cmd_delete)
    ex = sub.add_parser("explain", help="which policies select POD and what they allow")
    ex.add_argument("pod", help="namespace/name, pod name, container id or address")
    common(ex)
    ex.set_defaults(func=cmd_explain)
    lb = sub.add_parser("label", help="change a running pod's labels: KEY=VALUE, KEY- removes")
    lb.add_argument("pod", help="namespace/name, pod name, container id or address")
    lb.add_argument("changes", nargs="+", metavar="KEY=VALUE|KEY-")
    common(lb)
    lb.set_defaults(func=cmd_label)
    me = sub.add_parser("metrics", help="drop counters in the Prometheus text format")
    common(me)
    me.set_defaults(func=cmd_metrics)


def targets(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(label, socket path) of every agent the command goes to."""
    if args.lab:
        if args.socket or args.state_dir != DEFAULT_STATE_DIR:
            raise ConfigError("--socket/--state-dir and --lab exclude each other")
        return lab_targets(args.lab, list(args.host))
    if args.host:
        raise ConfigError("--host needs --lab")
    return [("agent", str(agent_socket(args)))]


def _call_all(args: argparse.Namespace, request: dict[str, Any]) -> list[tuple[str, Any]]:
    from fabric.control import call

    if args.network:
        request["network"] = args.network
    return [(label, call(path, request, timeout=60)) for label, path in targets(args)]


def _print(args: argparse.Namespace, results: list[tuple[str, Any]], render) -> int:
    if args.json:
        data = results[0][1] if len(results) == 1 and not args.lab else dict(results)
        print(json.dumps(data, indent=2))
        return 0
    for label, res in results:
        if len(results) > 1 or args.lab:
            print(f"== {label}")
        print(render(res))
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from fabric.policy.load import load_file

    objs = load_file(args.file)
    docs = [dict(o.source) for o in objs]
    results = _call_all(args, {"op": "policy.apply", "documents": docs, "source": args.file})

    def render(r: dict[str, Any]) -> str:
        lines = [f"{k} {what}" for what in ("created", "configured", "unchanged")
                 for k in r.get(what, [])]
        return "\n".join(lines) or "nothing to do"

    return _print(args, results, render)


def cmd_list(args: argparse.Namespace) -> int:
    results = _call_all(args, {"op": "policy.list"})

    def render(items: list[dict[str, Any]]) -> str:
        if not items:
            return "no policies"
        rows = [("KIND", "NAMESPACE/NAME", "POD-SELECTOR", "TYPES", "RULES(in/eg)")]
        for i in items:
            if i["kind"] == "Namespace":
                labels = ",".join(f"{k}={v}" for k, v in i["labels"].items())
                rows.append(("Namespace", i["name"], labels or "-", "-", "-"))
            else:
                rows.append(("NetworkPolicy", f"{i['namespace']}/{i['name']}", i["podSelector"],
                             ",".join(i["policyTypes"]),
                             f"{i['ingressRules']}/{i['egressRules']}"))
        widths = [max(len(r[c]) for r in rows) for c in range(5)]
        return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
                         for r in rows)

    return _print(args, results, render)


def cmd_delete(args: argparse.Namespace) -> int:
    req: dict[str, Any] = {"op": "policy.delete", "name": args.name}
    if args.namespace_object:
        req["kind"] = "Namespace"
    return _print(args, _call_all(args, req), lambda r: f"{r['deleted']} deleted")


def render_explain(r: dict[str, Any]) -> str:
    lines = [f"pod {r['pod']} ({', '.join(r['addresses'])}) labels "
             + (",".join(f"{k}={v}" for k, v in r["labels"].items()) or "-")]
    if not r.get("enforcing", True):
        lines.append("note: this network's policy engine is 'none': nothing is enforced")
    for d in ("ingress", "egress"):
        info = r[d]
        lines.append(f"{d}: {info['summary']}")
        if info["policies"]:
            lines.append(f"  selected by: {', '.join(info['policies'])}")
        for a in info["allowed"]:
            lines.append(f"  allow {'from' if d == 'ingress' else 'to'} "
                         f"{'; '.join(a['peers'])} ports {', '.join(a['ports'])} "
                         f"[{a['policy']} rule {a['rule']}: "
                         f"{', '.join(a['addresses'][:6]) or 'no addresses'}"
                         f"{' ...' if len(a['addresses']) > 6 else ''}]")
        drops = (r.get("drops") or {}).get(d)
        if drops is not None:
            lines.append(f"  dropped packets: {drops}")
    lines += [f"note: {n}" for n in r.get("notes", [])]
    return "\n".join(lines)


def _pod_op(args: argparse.Namespace, req: dict[str, Any]) -> list[tuple[str, Any]]:
    """Send a request about one pod; in a lab, the hosts that do not have it are skipped."""
    from fabric.control import call

    results = []
    errors = []
    for label, path in targets(args):
        if args.network:
            req["network"] = args.network
        try:
            results.append((label, call(path, req, timeout=60)))
        except FabricError as exc:
            if not args.lab:  # in a lab the pod lives on one host: others say NotFound
                raise
            errors.append(exc)
    if not results:  # the error of the host that has the pod, if any said more than NotFound
        raise next((e for e in errors if not isinstance(e, NotFound)), errors[0])
    return results


def cmd_explain(args: argparse.Namespace) -> int:
    return _print(args, _pod_op(args, {"op": "policy.explain", "pod": args.pod}),
                  render_explain)


def parse_changes(items: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if eq:
            out[key] = value
        elif item.endswith("-") and len(item) > 1:
            out[item[:-1]] = None
        else:
            raise ConfigError(f"{item!r} is not KEY=VALUE or KEY-",
                              fix="e.g. fabric policy label web role=api tier-")
    return out


def cmd_label(args: argparse.Namespace) -> int:
    req = {"op": "policy.label", "pod": args.pod, "labels": parse_changes(args.changes)}
    return _print(args, _pod_op(args, req), lambda r: f"pod {r['pod']} labels " + (
        ",".join(f"{k}={v}" for k, v in r["labels"].items()) or "-"))


def cmd_metrics(args: argparse.Namespace) -> int:
    from fabric.policy.metrics import render_metrics

    for label, status in _call_all(args, {"op": "status"}):
        if args.json:
            print(json.dumps({label: [n.get("policy_status") for n in status["networks"]]}))
        else:
            print(render_metrics(status), end="")
    return 0
