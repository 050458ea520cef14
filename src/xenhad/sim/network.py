"""Who can reach whom: partitions into groups and one-way cuts between hosts.

Hosts are named by uuid here. A cut (src, dst) black-holes requests that src opens to dst;
dst can still open requests to src. Hosts not named in any partition group keep reaching
everyone. The "outside" (no host) always reaches every host.
"""

from __future__ import annotations


class Network:
    def __init__(self) -> None:
        self._group_of: dict[str, int] = {}
        self._cuts: set[tuple[str, str]] = set()

    def partition(self, groups: list[list[str]]) -> None:
        self._group_of = {h: i for i, group in enumerate(groups) for h in group}

    def cut(self, src: str, dst: str) -> None:
        self._cuts.add((src, dst))

    def heal(self) -> None:
        self._group_of = {}
        self._cuts = set()

    def blocked(self, src: str | None, dst: str) -> bool:
        if src is None or src == dst:
            return False
        if (src, dst) in self._cuts:
            return True
        a, b = self._group_of.get(src), self._group_of.get(dst)
        return a is not None and b is not None and a != b

    def describe(self, names: dict[str, str]) -> dict[str, list[list[str]]]:
        groups: dict[int, list[str]] = {}
        for h, g in self._group_of.items():
            groups.setdefault(g, []).append(names.get(h, h))
        return {"partition": [sorted(v) for _, v in sorted(groups.items())],
                "cuts": [[names.get(a, a), names.get(b, b)] for a, b in sorted(self._cuts)]}
