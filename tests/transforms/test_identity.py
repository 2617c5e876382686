import random

from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.identity import (
    identity_edges,
    node_of_anonymous,
    node_of_user,
    own_node,
    person_id_for,
    resolve_components,
)


def test_identify_links_the_device_to_the_user():
    row = {"type": "identify", "user_id": "u1", "anonymous_id": "a1"}
    assert identity_edges(row) == [("a:a1", "u:u1")]


def test_alias_links_previous_id_to_the_new_user():
    row = {"type": "alias", "user_id": "new", "previous_id": "old", "anonymous_id": None}
    assert set(identity_edges(row)) == {("u:old", "u:new"), ("a:old", "u:new")}


def test_anonymous_only_event_asserts_nothing():
    assert identity_edges({"type": "track", "user_id": None, "anonymous_id": "a1"}) == []


def test_component_takes_the_user_node_as_canonical():
    mapping = resolve_components([("a:x", "u:bob"), ("a:y", "u:bob"), ("a:y", "a:z")])
    assert {mapping[n] for n in ("a:x", "a:y", "a:z", "u:bob")} == {"u:bob"}


def test_two_users_merged_by_alias_pick_the_smaller_user_id():
    mapping = resolve_components([("u:b", "u:a"), ("a:1", "u:b")])
    assert mapping["a:1"] == "u:a" and mapping["u:b"] == "u:a"


def test_person_id_is_stable_and_tenant_scoped():
    assert person_id_for("t1", "u:bob") == person_id_for("t1", "u:bob")
    assert person_id_for("t1", "u:bob") != person_id_for("t2", "u:bob")


def test_own_node_prefers_user():
    assert own_node({"user_id": "u", "anonymous_id": "a"}) == node_of_user("u")
    assert own_node({"user_id": None, "anonymous_id": "a"}) == node_of_anonymous("a")


def _components_by_bfs(edges, nodes):
    """Independent reference: connected components by breadth-first search."""
    adjacency = {n: set() for n in nodes}
    for a, b in edges:
        adjacency.setdefault(a, set()).add(b)
        adjacency.setdefault(b, set()).add(a)
    seen, components = set(), []
    for start in adjacency:
        if start in seen:
            continue
        queue, comp = [start], set()
        while queue:
            node = queue.pop()
            if node in comp:
                continue
            comp.add(node)
            queue.extend(adjacency[node] - comp)
        seen |= comp
        components.append(comp)
    return components


node = st.sampled_from([f"{kind}:{i}" for kind in "ua" for i in range(8)])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(node, node), max_size=20), st.randoms())
def test_union_find_matches_bfs_components_in_any_edge_order(edges, rnd):
    nodes = {n for e in edges for n in e}
    shuffled = list(edges)
    rnd.shuffle(shuffled)
    mapping = resolve_components(shuffled)
    for comp in _components_by_bfs(edges, nodes):
        users = sorted(n for n in comp if n.startswith("u:"))
        expected = users[0] if users else min(comp)
        assert {mapping[n] for n in comp} == {expected}


def test_large_chain_resolves_without_recursion_limits():
    edges = [(f"a:{i}", f"a:{i + 1}") for i in range(50_000)] + [("a:49999", "u:z")]
    random.Random(1).shuffle(edges)
    mapping = resolve_components(edges)
    assert set(mapping.values()) == {"u:z"}
