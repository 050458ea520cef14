"""The chaos harness's own invariants, on made-up evidence: what they flag and what not."""

from __future__ import annotations

from xenhad.chaos.checks import healthy_fenced, self_fence_proofs_hold


def test_a_host_switched_off_after_seconds_of_health_is_flagged() -> None:
    samples = [(t / 5, {"host2": True, "host3": t < 40}) for t in range(60)]
    found = healthy_fenced([(11.0, "host2"), (11.0, "host3")], samples)
    assert len(found) == 1 and found[0].startswith("healthy host fenced: host2")
    # Healthy only just now (a heal a moment ago): not flagged.
    fresh = [(t / 5, {"host2": t >= 54}) for t in range(60)]
    assert healthy_fenced([(11.8, "host2")], fresh) == []


def test_a_watchdog_proof_of_a_host_that_never_went_down_is_flagged() -> None:
    opened = [(100.0, "host2")]
    assert self_fence_proofs_hold([(130.0, "host2")], opened, {"host2": [118.0]}) == []
    assert self_fence_proofs_hold([(130.0, "host2")], opened, {"host2": [97.0]}) == []
    (found,) = self_fence_proofs_hold([(130.0, "host2")], opened, {"host2": [131.0]})
    assert "never went down" in found
    # A power loss long before its incident is another episode.
    assert self_fence_proofs_hold([(130.0, "host2")], opened, {"host2": [10.0]}) != []
