"""Two live peers with one name, a Router mixin (weave: PeerName + UID).

Peer names are persisted, so a copied state directory makes two live peers with one
name. uids order incarnations (a real node puts its start time in the high bits), and
every peer applies one rule: the earlier incarnation keeps the name; the later one is
told (directly at the handshake, by a CLOSE frame from a third peer that meets both, or
by the earlier one re-asserting its topology record above the later one's version) and
*yields*: it stops its router, refuses connections and exposes ``name_collision``
(allocators on it refuse to allocate). A stale record of our own previous incarnation
never has a version above ours (versions start at the start time in ms), so a restart
is not mistaken for a copy.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from fabric.mesh.names import fmt_name
from fabric.mesh.topology import PeerRecord, TopologyUpdate
from fabric.mesh.wire import CLOSE, Frame

if TYPE_CHECKING:
    from fabric.mesh.router import Connection, Router
    from fabric.mesh.targets import Target

__all__ = ["NameCollisions"]

_log = logging.getLogger("fabric.mesh")


class NameCollisions:
    def _same_name_other_uid(self: Router, conn: Connection, t: Target | None) -> bool:
        """A connection from a peer with our name and another uid: refuse it (True)."""
        ruid = getattr(conn, "remote_uid", None)
        if conn.remote != self.name or ruid in (None, self.uid) or self._stopped:
            return False
        conn.close("peer name collision")
        if t is not None:
            t.state, t.last_error = "failed", "peer name collision"  # not retried
        self.name_collision_seen(ruid, conn.address)
        return True

    def _two_peers_one_name(self: Router, old: Connection, conn: Connection) -> str:
        """We hold ``old`` to a peer and ``conn`` arrives with its name but another uid:
        keep the earlier incarnation, tell and close the later one — unless the old
        connection is silent (``alive()`` False): then the new incarnation replaces it.
        Returns "refused" (``conn`` closed), "replaced" (``old`` closed) or "" (same uid)."""
        ruid, old_uid = getattr(conn, "remote_uid", None), getattr(old, "remote_uid", None)
        if None in (ruid, old_uid) or ruid == old_uid:
            return ""
        alive = getattr(old, "alive", None)
        if ruid > old_uid and alive is not None and not alive():
            # the old connection is silent: most likely our peer restarted and its old
            # connection has not timed out yet; a new incarnation replaces it
            old.close("replaced by a newer incarnation of the peer")
            return "replaced"
        later, earlier_uid = (conn, old_uid) if ruid > old_uid else (old, ruid)
        self.rejected["name-collision"] += 1
        self.log(logging.ERROR, "name-collision", fmt_name(conn.remote),
                 "mesh: two peers named %s (uid %s at %s, uid %s at %s); refusing the later",
                 fmt_name(conn.remote), old_uid, old.address, ruid, conn.address)
        self._send(later, Frame(CLOSE, payload=json.dumps(
            {"reason": "name-collision", "uid": earlier_uid}).encode()))
        later.close("peer name collision")
        return "refused" if later is conn else "replaced"

    def _check_own_record(self: Router, update: TopologyUpdate, sender: int) -> None:
        for name, version, body in update.raw:
            if name == self.name and version > self.version:  # newer than ours: not stale
                rec = PeerRecord.from_wire(name, version, body)
                if rec.uid != self.uid:
                    self.name_collision_seen(rec.uid, f"gossip from {fmt_name(sender)}",
                                             version)

    def _on_close_frame(self: Router, conn: Connection, payload: bytes) -> None:
        try:
            msg = json.loads(payload)
            reason, uid = str(msg["reason"]), msg.get("uid")
        except (ValueError, TypeError, KeyError):
            self.rejected["bad-close"] += 1
            return
        if reason == "name-collision" and type(uid) is int and uid != self.uid:
            self.name_collision_seen(uid, f"{conn.address} (told by {fmt_name(conn.remote)})")

    def name_collision_seen(self: Router, other_uid: int, via: str, version: int = 0) -> None:
        """Another live peer uses our name with incarnation ``other_uid``."""
        earlier = other_uid < self.uid
        self.collisions[other_uid] = {"uid": other_uid, "via": via, "we_yield": earlier,
                                      "time": round(self.env.now(), 3)}
        self.rejected["name-collision"] += 1
        if not earlier:
            self.log(logging.ERROR, "name-collision", str(other_uid),
                     "mesh: a later peer also calls itself %s (seen via %s); it must yield "
                     "(was its state directory copied?)", fmt_name(self.name), via)
            if version >= self.version:  # re-assert our record above the intruder's
                self.version = version
                self._self_changed()
            return
        if self.name_collision is None:
            self.name_collision = {
                "message": f"another running peer (started earlier) uses our name "
                           f"{fmt_name(self.name)} (seen via {via}); this peer refuses to "
                           "join the mesh and to allocate",
                "fix": "stop this peer and remove its state directory (it was copied from "
                       "another peer) so that it starts under a new name"}
            _log.error("mesh: %s (fix: %s)", self.name_collision["message"],
                       self.name_collision["fix"])
            self.stop()
            for t in self.targets.values():
                t.state, t.last_error = "failed", "refused: peer name collision"
            self._topology_changed()

