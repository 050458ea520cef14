"""Placement with SRs, networks, devices and anti-affinity groups: scenarios and properties."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from xenhad.model import Protection
from xenhad.placement import MIB, Candidate, HostCapacity, Plan, can_run, plan

GIB = 1024 * MIB
SHARED, NET = "sr-shared", "net-eth0"


def vm(uuid: str, gib: float = 1, *, srs: tuple[str, ...] = (SHARED,),
       networks: tuple[str, ...] = (NET,), group: str | None = None, pinned: str = "",
       refused: tuple[str, ...] = (), affinity: str | None = None) -> Candidate:
    return Candidate(uuid=uuid, memory=int(gib * GIB), affinity=affinity, order=0,
                     protection=Protection.RESTART, srs=frozenset(srs),
                     networks=frozenset(networks), pinned=pinned, group=group,
                     refused=frozenset(refused))


def host(uuid: str, gib: float = 64, *, srs: tuple[str, ...] = (SHARED,),
         networks: tuple[str, ...] = (NET,), receiving: bool = True) -> HostCapacity:
    return HostCapacity(uuid=uuid, free_memory=int(gib * GIB), srs=frozenset(srs),
                        networks=frozenset(networks), receiving=receiving)


def where(p: Plan) -> dict[str, str]:
    return {pl.vm: pl.host for pl in p.placements}


def test_a_vm_on_the_dead_hosts_local_sr_is_stranded_and_says_why() -> None:
    p = plan([vm("local", srs=("sr-local-h2",)), vm("agile")],
             [host("h1"), host("h3")], labels={"sr-local-h2": "Local storage on host2"})
    assert "local" not in where(p)
    assert [(s.vm, s.reason) for s in p.stranded] == [
        ("local", "its disk is on SR Local storage on host2, which no other host sees")]
    assert where(p)["agile"] in ("h1", "h3")
    assert p.unplaced == ()


def test_a_vm_goes_only_where_its_sr_is_plugged() -> None:
    p = plan([vm("v", srs=(SHARED, "sr-iscsi"))],
             [host("h1", 200), host("h3", 10, srs=(SHARED, "sr-iscsi"))])
    assert where(p) == {"v": "h3"}


def test_a_vm_goes_only_where_its_network_is() -> None:
    p = plan([vm("v", networks=(NET, "net-eth1"))],
             [host("h1", 200), host("h3", 10, networks=(NET, "net-eth1"))])
    assert where(p) == {"v": "h3"}


def test_a_network_no_survivor_has_strands_the_vm() -> None:
    p = plan([vm("v", networks=("net-eth1",))], [host("h1")], labels={"net-eth1": "eth1"})
    assert p.stranded[0].reason == "its VIF is on network eth1, which no other host has"


def test_a_passthrough_device_pins_the_vm() -> None:
    p = plan([vm("gpu", pinned="has PCI passthrough of its host")], [host("h1")])
    assert [(s.vm, s.reason) for s in p.stranded] == [("gpu", "has PCI passthrough of its host")]


def test_the_affinity_host_is_used_only_if_it_can_run_the_vm() -> None:
    p = plan([vm("v", srs=("sr-x",), affinity="h1")],
             [host("h1", 200), host("h2", 10, srs=("sr-x",))])
    assert where(p) == {"v": "h2"}


def test_a_host_that_refused_is_not_tried_again() -> None:
    p = plan([vm("v", refused=("h1",))], [host("h1", 200), host("h2", 10)])
    assert where(p) == {"v": "h2"}


def test_refused_by_every_host_that_could_is_stranded() -> None:
    p = plan([vm("v", refused=("h1", "h2"))], [host("h1"), host("h2")])
    assert p.stranded[0].reason == (
        "refused by every host that sees its SRs and networks (h1, h2)")


def test_a_vm_only_a_disabled_host_could_run_waits() -> None:
    p = plan([vm("v", srs=("sr-x",))],
             [host("h1"), host("h2", srs=("sr-x",), receiving=False)])
    assert p.stranded == ()
    assert p.unplaced[0].vm == "v"
    assert "not receiving" in p.unplaced[0].reason


def test_an_anti_affinity_pair_lands_on_two_hosts() -> None:
    p = plan([vm("a", 4, group="g"), vm("b", 4, group="g")], [host("h1", 100), host("h2", 10)])
    assert sorted(where(p).values()) == ["h1", "h2"]


def test_a_member_avoids_the_host_running_its_partner() -> None:
    p = plan([vm("a", group="g")], [host("h1", 100), host("h2", 10)],
             grouped={"g": {"h1": 1}})
    assert where(p) == {"a": "h2"}


def test_a_pair_shares_a_host_only_when_no_other_has_room() -> None:
    p = plan([vm("a", 4, group="g"), vm("b", 4, group="g")], [host("h1", 100), host("h2", 2)])
    assert where(p) == {"a": "h1", "b": "h1"}


def test_overhead_is_part_of_the_memory_asked() -> None:
    # The caller gives start memory with its overhead: 1 GiB + 11 MiB does not fit in 1 GiB.
    p = plan([Candidate("v", GIB + 11 * MIB, None, 0, Protection.RESTART)],
             [HostCapacity("h", GIB)])
    assert p.unplaced[0].reason == "needs 1035 MiB, largest free 1024 MiB"


def test_unknown_host_storage_is_taken_as_seeing_everything() -> None:
    # Journals from before storage was modelled carry hosts without SRs or networks.
    p = plan([vm("v", srs=("sr-x",))], [HostCapacity("h", 8 * GIB)])
    assert where(p) == {"v": "h"}


# -- properties --------------------------------------------------------------------------

SRS = [f"sr{i}" for i in range(4)]
NETS = [f"net{i}" for i in range(3)]

hosts_st = st.lists(
    st.builds(
        lambda i, gib, srs, nets, receiving: HostCapacity(
            f"h{i}", gib * GIB, frozenset(srs), frozenset(nets), receiving),
        st.integers(0, 9), st.integers(0, 32), st.sets(st.sampled_from(SRS)),
        st.sets(st.sampled_from(NETS)), st.booleans()),
    max_size=8, unique_by=lambda h: h.uuid)

vms_st = st.lists(
    st.builds(
        lambda i, gib, srs, nets, group, refused: Candidate(
            f"v{i}", gib * GIB, None, 0, Protection.RESTART, frozenset(srs),
            frozenset(nets), "", group, frozenset(refused)),
        st.integers(0, 40), st.integers(0, 8), st.sets(st.sampled_from(SRS), max_size=2),
        st.sets(st.sampled_from(NETS), max_size=2),
        st.sampled_from([None, "g1", "g2"]),
        st.sets(st.sampled_from([f"h{i}" for i in range(10)]), max_size=2)),
    max_size=30, unique_by=lambda c: c.uuid)


@settings(max_examples=300, deadline=None)
@given(vms_st, hosts_st)
def test_no_plan_puts_a_vm_where_it_cannot_see_its_srs_or_networks(
        vms: list[Candidate], hosts: list[HostCapacity]) -> None:
    p = plan(vms, hosts)
    by_vm = {c.uuid: c for c in vms}
    by_host = {h.uuid: h for h in hosts}
    for pl in p.placements:
        c, h = by_vm[pl.vm], by_host[pl.host]
        assert h.receiving
        assert h.srs is not None and c.srs <= h.srs
        assert h.networks is not None and c.networks <= h.networks
        assert pl.host not in c.refused
    # Every VM is accounted for once: placed, waiting or stranded.
    accounted = [pl.vm for pl in p.placements] + [u.vm for u in p.unplaced] + [
        u.vm for u in p.stranded]
    assert sorted(accounted) == sorted(by_vm)
    # Stranded means no host at all could run it.
    for s in p.stranded:
        assert not any(can_run(by_vm[s.vm], h) for h in hosts)


@settings(max_examples=300, deadline=None)
@given(vms_st, hosts_st)
def test_group_members_share_a_host_only_when_no_other_had_room(
        vms: list[Candidate], hosts: list[HostCapacity]) -> None:
    p = plan(vms, hosts)
    by_vm = {c.uuid: c for c in vms}
    free = {h.uuid: h.free_memory for h in hosts if h.receiving}
    members: dict[tuple[str, str], int] = {}
    for pl in p.placements:  # one wave here (order 0): placed in this sequence
        c = by_vm[pl.vm]
        if c.group is not None:
            shared = members.get((c.group, pl.host), 0)
            if shared:
                # Another host that could run it and had room ran fewer of its group.
                for h in hosts:
                    if h.receiving and h.uuid != pl.host and can_run(c, h) \
                            and free[h.uuid] >= c.memory:
                        assert members.get((c.group, h.uuid), 0) >= shared
            members[(c.group, pl.host)] = shared + 1
        free[pl.host] -= c.memory
