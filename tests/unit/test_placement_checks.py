"""The chaos invariant on anti-affinity: a pair may share a host only without room elsewhere."""

from __future__ import annotations

from xenhad.chaos.placement_checks import Sample, anti_affinity_spread

GROUPS = {"g": ("a", "b")}
ALL = frozenset({"h1", "h2", "h3"})


def samples(*steps: tuple[dict[str, tuple[str, ...]], frozenset[str]]) -> list[Sample]:
    history = [Sample(t * 0.5, {"a": ("h2",), "b": ("h2",)}, ALL) for t in range(20)]
    return history + [Sample(10.0 + i * 0.5, where, receiving)
                      for i, (where, receiving) in enumerate(steps)]


def test_a_pair_restarted_on_one_host_while_another_had_room_is_a_violation() -> None:
    found = anti_affinity_spread(GROUPS, samples(
        ({}, ALL - {"h2"}), ({"a": ("h1",)}, ALL - {"h2"}),
        ({"a": ("h1",), "b": ("h1",)}, ALL - {"h2"})))
    assert len(found) == 1 and "b started" in found[0] and "h3" in found[0]


def test_spread_over_two_hosts_is_fine() -> None:
    assert anti_affinity_spread(GROUPS, samples(
        ({}, ALL - {"h2"}), ({"a": ("h1",)}, ALL - {"h2"}),
        ({"a": ("h1",), "b": ("h3",)}, ALL - {"h2"}))) == []


def test_sharing_is_fine_when_no_other_host_could_take_it() -> None:
    only_h1 = frozenset({"h1"})
    assert anti_affinity_spread(GROUPS, samples(
        ({}, only_h1), ({"a": ("h1",)}, only_h1), ({"a": ("h1",), "b": ("h1",)}, only_h1),
    )) == []


def test_the_seeded_pair_on_one_host_is_not_a_start() -> None:
    assert anti_affinity_spread(GROUPS, samples()) == []


def test_a_start_is_judged_when_asked_for_not_when_its_domain_appeared() -> None:
    # Virtual chaos seed 8000403: b asked for on h1 when only h1 could take it; h3 came back
    # while the start waited; b's domain appeared on h1 beside a long after.
    only_h1, h1_h3 = frozenset({"h1"}), frozenset({"h1", "h3"})
    waiting = [({"a": ("h1",)}, only_h1)] * 2 + [({"a": ("h1",)}, h1_h3)] * 16
    history = samples(*waiting, ({"a": ("h1",), "b": ("h1",)}, h1_h3))
    asked_at = history[-19].at
    for s in history[-19:-1]:
        object.__setattr__(s, "scheduled", {"b": "h1"})
    assert history[-1].at - asked_at > 6.0 and anti_affinity_spread(GROUPS, history) == []
    # Without the ask in the samples, the start is judged at its end: h3 had room then.
    for s in history[-19:-1]:
        object.__setattr__(s, "scheduled", {})
    assert len(anti_affinity_spread(GROUPS, history)) == 1


def test_a_start_asked_for_while_another_host_had_room_is_a_violation() -> None:
    steps = [({"a": ("h1",)}, ALL - {"h2"})] * 3 + [({"a": ("h1",), "b": ("h1",)}, ALL - {"h2"})]
    history = samples(*steps)
    for s in history[-4:-1]:
        object.__setattr__(s, "scheduled", {"b": "h1"})
    found = anti_affinity_spread(GROUPS, history)
    assert len(found) == 1 and "h3" in found[0]
