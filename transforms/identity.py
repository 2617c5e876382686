"""Identity stitching: link anonymous ids and user ids into one stable ``person_id``.

Nodes are ``u:<userId>`` and ``a:<anonymousId>``; an identify, an alias or any event carrying
both ids is an edge. A person is a connected component; its canonical node is the smallest
user node (or, with no user, the smallest anonymous node), so the id is the same in every run
and on every worker that sees the same graph, and an anonymous visitor keeps their id until
they are identified.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

USER = "u:"
ANONYMOUS = "a:"


def node_of_user(user_id: str) -> str:
    return USER + user_id


def node_of_anonymous(anonymous_id: str) -> str:
    return ANONYMOUS + anonymous_id


def own_node(row: Mapping) -> str:
    """The node an event belongs to before stitching: its user if known, else its device."""
    user = row.get("user_id")
    return node_of_user(user) if user else node_of_anonymous(row["anonymous_id"])


def identity_edges(row: Mapping) -> list[tuple[str, str]]:
    """Links an event asserts: userId with anonymousId; alias: previousId with userId."""
    edges = []
    user, anon, previous = row.get("user_id"), row.get("anonymous_id"), row.get("previous_id")
    if user and anon:
        edges.append((node_of_anonymous(anon), node_of_user(user)))
    if row.get("type") == "alias" and previous:
        target = node_of_user(user) if user else node_of_anonymous(anon) if anon else None
        if target:
            # previousId may be a former user id or an anonymous id: Segment doesn't say which.
            edges.append((node_of_user(previous), target))
            edges.append((node_of_anonymous(previous), target))
    return edges


def _better(a: str, b: str) -> str:
    """Canonical choice: user nodes before anonymous ones, then lexicographic."""
    return min(a, b, key=lambda n: (not n.startswith(USER), n))


def resolve_components(edges: Iterable[tuple[str, str]], nodes: Iterable[str] = ()) -> dict[str, str]:
    """Union-find over the edges; maps every node to its component's canonical node."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            keep = _better(ra, rb)
            parent[ra if keep == rb else rb] = keep
    for node in nodes:
        find(node)
    return {node: find(node) for node in parent}


def person_id_for(tenant_id: str, canonical_node: str) -> str:
    """Stable, opaque person key: the same tenant and canonical node give the same id everywhere."""
    digest = hashlib.blake2b(f"{tenant_id}\x1f{canonical_node}".encode(), digest_size=12).hexdigest()
    return f"p_{digest}"
