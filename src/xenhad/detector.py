"""Pure host-failure detection: each tick's observations and the time in, verdicts out.

A host *misses* a tick when XAPI says it is not live (host_metrics.live, which the master
only clears after host_assumed_dead_interval, up to ~10 minutes late) or when its own xapi
did not answer our probe. Neither signal alone is trusted to say "up": a stale `live` on a
dead host and an answering xapi on a host the master has already given up on both count as
misses. Two things outweigh both, because they prove the host's dom0 runs:

- its daemon is *heard*: in proven mutual contact (authenticated heartbeats that echo ours,
  peers/table.py). XAPI's `live`, or a rival master's stale database, may say otherwise; a
  host whose daemon beats is alive, and fencing it would kill healthy VMs.
- its xapi answers as a *rival master*: a master that came back from the dead, or an
  operator's doing. It is left to step down (failover/), never fenced.

A host heard while its xapi does not answer has a *hung* xapi: it runs its VMs, and is left
alone and said loudly (HUNG, once per episode). Only if the operator chose to, with
`hung_xapi_fence_after` > 0, does it count as missing once its xapi has been silent that
long.

Life of one host::

    UP --miss--> SUSPECT --(enough misses, long enough, quorate, enabled)--> DOWN
    SUSPECT --answers--> UP          (CLEARED: the run of misses starts again from zero)
    DOWN --answers--> RETURNING --answers for recover_hold_seconds--> UP   (BACK)
    RETURNING --miss--> DOWN         (the hold starts again at the next answer)

Rules that keep a wrong DOWN from ever being emitted:

- DOWN needs both `confirm_misses` consecutive misses and `confirm_seconds` since the first
  of them, so neither a burst of fast ticks nor one slow tick confirms on its own.
- No DOWN while this node is not quorate, and misses seen without quorum do not count: at
  the first quorate tick that still misses, the run starts over (a node cut off from the
  majority "sees" every other host die, and what it saw then says nothing of them now).
- No DOWN for a disabled host (host.enabled false: maintenance, or a host that is still
  starting up). Its run of misses is kept for the record, but when the host is re-enabled
  while still missing the run restarts at that tick: confirmation then needs the full
  `confirm_misses` and `confirm_seconds` from the re-enable, so an operator ending a
  maintenance window on a host that is mid-reboot does not trigger a recovery at once.
- One DOWN per episode: a DOWN host stays DOWN (no second verdict) until it has answered,
  with XAPI calling it live, for `recover_hold_seconds` without a single miss; then BACK.
- A host that answers before confirmation is CLEARED and its run starts over, so a host
  that only ever misses short blips never completes a confirmation.

When thresholds are met but a DOWN is held (no quorum, or disabled), a SUSPECT verdict
says so once per cause, with the cause in `reason`, so the daemon logs why nothing happens.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from xenhad.model import HostId


@dataclass(frozen=True)
class DetectorSettings:
    confirm_misses: int = 3
    confirm_seconds: float = 10.0
    recover_hold_seconds: float = 30.0
    hung_xapi_fence_after: float = 0.0
    """Seconds a heard host's xapi may stay silent before the host counts as missing; 0:
    never (a hung xapi on a live dom0 is left alone)."""

    def __post_init__(self) -> None:
        if self.confirm_misses < 1:
            raise ValueError(
                f"confirm_misses = {self.confirm_misses} is invalid: expected an integer >= 1"
            )
        if self.confirm_seconds < 0:
            raise ValueError(
                f"confirm_seconds = {self.confirm_seconds} is invalid: expected seconds >= 0"
            )
        if self.recover_hold_seconds < 0:
            raise ValueError(
                f"recover_hold_seconds = {self.recover_hold_seconds} is invalid: "
                "expected seconds >= 0"
            )


@dataclass(frozen=True)
class Observation:
    """What one tick saw of one host."""

    xapi_live: bool
    """host_metrics.live from the master's database (slow: up to 600 s stale)."""
    answered: bool
    """The host's own xapi answered our probe this tick."""
    enabled: bool
    """host.enabled: false means maintenance (or a host still starting up)."""
    heard: bool = False
    """Its daemon is in proven mutual contact with ours (peers/table.py)."""
    rival_master: bool = False
    """Its xapi answered our probe as a master."""
    beats_slowly: bool = False
    """Its daemon is proven alive within the quorum window (peers.window), or within its own
    pace when its proofs keep coming later than that (peers/pace.py), though not lately
    enough to count as `heard`: its heartbeats are slow, not gone. Such a host still misses
    (a dead host's last proof ages through the window too), but it is never confirmed down
    while it beats so: it counts toward quorum on the same evidence, and its VMs run
    (virtual chaos seeds 7000027, 7000417, 1000205, 11000041: heartbeats 0.4 to 0.8 s each
    way, the xapi silent, and a healthy host was fenced)."""
    beats_why: str = ""
    """Why it beats slowly when it is held longer than the quorum window: its proofs of life
    keep coming, later than the window, and the hold follows their pace (peers/pace.py;
    virtual chaos seeds 1000130 and 3000239: proofs at the window's edge, the hold lapsed
    between two, and a healthy host was fenced). Empty for the window's own hold."""
    alive_at: float | None = None
    """When, on our clock, its daemon was last proven alive (PeerTable.alive_at; None: never
    or not asked). Proof dated after a run of misses began restarts the run from then: a
    host alive after we began to doubt it is confirmed down only once it has been silent
    for confirm_seconds, whatever the network's delay. A proof can only be dated earlier
    than the life it proves (echoes, table.py), so a dead host's run never restarts."""

    @property
    def missed(self) -> bool:
        if self.heard or (self.answered and self.rival_master):
            return False
        return not self.xapi_live or not self.answered

    @property
    def hung(self) -> bool:
        """Its daemon beats but its xapi does not answer."""
        return self.heard and not self.answered


class HostState(enum.Enum):
    UP = "up"
    SUSPECT = "suspect"
    DOWN = "down"
    RETURNING = "returning"
    """Was DOWN, answers again, and is serving its recover hold before BACK."""


class VerdictKind(enum.Enum):
    SUSPECT = "suspect"
    """First miss of a run, or a confirmation held back (the reason says why)."""
    CLEARED = "cleared"
    """A suspect host answered again before it was confirmed: its run is over."""
    DOWN = "down"
    """Confirmed dead: emitted once per episode."""
    BACK = "back"
    """A DOWN host answered continuously for recover_hold_seconds."""
    HUNG = "hung"
    """Its daemon beats but its xapi does not answer: left alone (said once an episode)."""


@dataclass(frozen=True)
class Verdict:
    kind: VerdictKind
    host: HostId
    since: float
    """When the run of misses behind this verdict began (monotonic seconds)."""
    misses: int
    """Consecutive misses in that run (for BACK: misses of the whole down episode)."""
    reason: str
    """A short phrase for the log: what was seen, and why a confirmation is held if it is."""


@dataclass(frozen=True)
class HostStatus:
    """One host's detector state, for the status line and `xenhad status`."""

    host: HostId
    state: HostState
    since: float | None
    """Start of the current run of misses (SUSPECT, DOWN, RETURNING), None when UP."""
    misses: int
    held: str
    """Why a due confirmation is held ("no quorum", "disabled"), or "" if none is."""
    returning_since: float | None
    """RETURNING only: when the host began answering again."""
    reason: str
    """What the last observation of the host said."""


class _Hold(enum.Enum):
    NONE = ""
    NO_QUORUM = "no quorum"
    DISABLED = "disabled"
    BEATS = "its daemon beats"


_UNQUORATE_WHY = "quorum regained: misses seen without it do not count, confirmation starts over"

_HOLD_WHY = {
    _Hold.NO_QUORUM: "held: this node has no quorum, so it confirms nothing",
    _Hold.DISABLED: "held: host is disabled (maintenance), so it is never confirmed down",
    _Hold.BEATS: "held: its daemon is proven alive within the quorum window (peers.window), "
                 "its heartbeats slow: a host that beats is never confirmed down",
}


@dataclass
class _Track:
    state: HostState = HostState.UP
    since: float = 0.0
    misses: int = 0
    hold: _Hold = _Hold.NONE
    returning_since: float = 0.0
    enabled: bool = True
    reason: str = ""
    unquorate: bool = False
    """Part of the current run of misses was seen without quorum."""
    hung_since: float | None = None
    """Since when its daemon beats while its xapi does not answer."""


def describe(obs: Observation) -> str:
    """The observation as the phrase a log line carries."""
    said = "xapi answering" if obs.answered else "xapi not answering"
    if obs.answered and obs.rival_master:
        said = "xapi answering as a master"
    live = "XAPI says live" if obs.xapi_live else "XAPI says not live"
    daemon = "; its daemon beats" if obs.heard else ""
    return f"{said}, {live}{daemon}"


class Detector:
    """Keeps one track per host; `observe` is called once per tick with every host.

    `settings` may be replaced between ticks (config reload); it applies from the next tick.
    """

    def __init__(self, settings: DetectorSettings) -> None:
        self.settings = settings
        self._tracks: dict[HostId, _Track] = {}
        self._last_now: float | None = None

    # -- queries -----------------------------------------------------------------------

    def state(self, host: HostId) -> HostState:
        """A host never observed (or forgotten) is UP: it has given no reason for doubt."""
        track = self._tracks.get(host)
        return track.state if track else HostState.UP

    def snapshot(self) -> dict[HostId, HostStatus]:
        return {host: self._status(host, t) for host, t in sorted(self._tracks.items())}

    @staticmethod
    def _status(host: HostId, t: _Track) -> HostStatus:
        up = t.state is HostState.UP
        return HostStatus(
            host=host,
            state=t.state,
            since=None if up else t.since,
            misses=t.misses,
            held=t.hold.value,
            returning_since=t.returning_since if t.state is HostState.RETURNING else None,
            reason=t.reason,
        )

    # -- restart -----------------------------------------------------------------------

    def restore_down(
        self, host: HostId, since: float,
        reason: str = "down before this daemon started (from the journal)",
    ) -> None:
        """Mark a host DOWN without a verdict: a restarted daemon replayed an open episode.

        `since` is informational only (it may be a wall-clock time from the journal, not a
        monotonic one): no decision reads it. The host leaves DOWN only through BACK.
        """
        track = self._tracks.setdefault(host, _Track())
        track.state = HostState.DOWN
        track.since = since
        track.misses = max(track.misses, self.settings.confirm_misses)
        track.hold = _Hold.NONE
        track.reason = reason

    # -- one tick ----------------------------------------------------------------------

    def observe(
        self, now: float, observations: Mapping[HostId, Observation], *, quorate: bool
    ) -> list[Verdict]:
        """Fold one tick into every host's track; return what changed, sorted by host.

        Hosts absent from `observations` (removed from the pool) are forgotten.
        """
        if self._last_now is not None and now < self._last_now:
            raise ValueError(
                f"detector time went backwards ({now} < {self._last_now}): "
                "pass monotonic seconds"
            )
        self._last_now = now
        for gone in [h for h in self._tracks if h not in observations]:
            del self._tracks[gone]
        verdicts: list[Verdict] = []
        for host in sorted(observations):
            track = self._tracks.get(host)
            if track is None:
                track = self._tracks[host] = _Track(enabled=observations[host].enabled)
            self._step(host, track, observations[host], now, quorate, verdicts)
        return verdicts

    def _step(
        self,
        host: HostId,
        t: _Track,
        obs: Observation,
        now: float,
        quorate: bool,
        out: list[Verdict],
    ) -> None:
        re_enabled = obs.enabled and not t.enabled
        t.enabled = obs.enabled
        seen = describe(obs)
        missed = self._missed(host, t, obs, now, out)
        if missed and obs.hung:
            seen += f"; hung for {now - (t.hung_since or now):g} s (hung_xapi_fence_after)"
        t.reason = seen
        if missed and quorate and t.state is HostState.SUSPECT and t.unquorate:
            # Misses seen while cut off from the majority say nothing of the host.
            self._start_run(t, now)
            out.append(Verdict(VerdictKind.SUSPECT, host, t.since, t.misses,
                               f"{seen}; {_UNQUORATE_WHY}"))
            return
        self._advance(host, t, obs, now, quorate, missed, re_enabled, seen, out)
        if missed and not quorate and t.state is HostState.SUSPECT:
            t.unquorate = True

    def _advance(
        self, host: HostId, t: _Track, obs: Observation, now: float, quorate: bool,
        missed: bool, re_enabled: bool, seen: str, out: list[Verdict],
    ) -> None:

        if t.state is HostState.UP:
            if missed:
                self._start_run(t, now)
                note = "" if obs.enabled else "; host is disabled (maintenance)"
                out.append(Verdict(VerdictKind.SUSPECT, host, t.since, t.misses, seen + note))
                self._maybe_confirm(host, t, obs, now, quorate, out)
        elif t.state is HostState.SUSPECT:
            if not missed:
                out.append(Verdict(VerdictKind.CLEARED, host, t.since, t.misses, seen))
                self._reset(t)
            elif re_enabled:
                # Maintenance ended mid-run: confirmation needs its full thresholds from now.
                self._start_run(t, now)
                out.append(Verdict(
                    VerdictKind.SUSPECT, host, t.since, t.misses,
                    seen + "; re-enabled while missing: confirmation starts over",
                ))
                self._maybe_confirm(host, t, obs, now, quorate, out)
            elif obs.alive_at is not None and obs.alive_at > t.since:
                said = t.hold is _Hold.BEATS
                self._start_run(t, obs.alive_at)
                t.hold = _Hold.BEATS
                if not said:  # once a run, not every tick the proofs come in late
                    out.append(Verdict(
                        VerdictKind.SUSPECT, host, t.since, t.misses,
                        seen + "; its daemon was proven alive after the misses began "
                        f"({now - obs.alive_at:.1f} s ago): they count from then",
                    ))
                self._maybe_confirm(host, t, obs, now, quorate, out)
            else:
                t.misses += 1
                self._maybe_confirm(host, t, obs, now, quorate, out)
        elif t.state is HostState.DOWN:
            if missed:
                t.misses += 1
            else:
                t.state = HostState.RETURNING
                t.returning_since = now
                self._maybe_back(host, t, now, seen, out)
        else:  # RETURNING
            if missed and obs.beats_slowly:
                # Its daemon is proven alive within the quorum window: its xapi restarts
                # (it stepped down to us, or was told to rejoin), the host has not gone
                # again. Taken back to DOWN, it was fenced by the run of misses from before
                # it returned, 0.8 s after its last heartbeat (golden scenario of chaos
                # seed 1000086, once two masters ranked by epoch). The hold starts over.
                t.returning_since = now
            elif missed and obs.alive_at is not None and obs.alive_at >= t.returning_since:
                # Back, proven alive since, and gone now: a run of its own, counted from
                # its last proof of life, confirms it (as for a suspect host, above).
                self._start_run(t, obs.alive_at)
                out.append(Verdict(VerdictKind.SUSPECT, host, t.since, t.misses,
                                   seen + "; back, then gone: its misses count from its "
                                   f"daemon's last proof of life ({now - obs.alive_at:.1f} s "
                                   "ago)"))
                self._maybe_confirm(host, t, obs, now, quorate, out)
            elif missed:
                # Any miss during the hold: the host is not back, and the hold restarts at
                # its next answer.
                t.state = HostState.DOWN
                t.misses += 1
            else:
                self._maybe_back(host, t, now, seen, out)

    def _missed(
        self, host: HostId, t: _Track, obs: Observation, now: float, out: list[Verdict]
    ) -> bool:
        if not obs.hung:
            t.hung_since = None
            return obs.missed
        if t.hung_since is None:
            t.hung_since = now
            after = self.settings.hung_xapi_fence_after
            out.append(Verdict(
                VerdictKind.HUNG, host, now, t.misses,
                f"{describe(obs)}: its dom0 runs, so it is left alone" + (
                    f" for {after:g} s (detector.hung_xapi_fence_after), then fenced"
                    if after > 0 else "; restart its toolstack (xe-toolstack-restart)"),
            ))
        after = self.settings.hung_xapi_fence_after
        return after > 0 and now - t.hung_since >= after

    def would_miss(self, host: HostId, obs: Observation, now: float) -> bool:
        """Whether `obs` would count as a miss of `host` now (nothing is changed): the
        check an incident makes before each fence attempt that the host is still gone."""
        t = self._tracks.get(host)
        if obs.beats_slowly:
            return False  # never fenced while it beats, however slowly (see Observation)
        if not obs.hung:
            return obs.missed
        after = self.settings.hung_xapi_fence_after
        since = t.hung_since if t is not None and t.hung_since is not None else now
        return after > 0 and now - since >= after

    def _maybe_confirm(
        self,
        host: HostId,
        t: _Track,
        obs: Observation,
        now: float,
        quorate: bool,
        out: list[Verdict],
    ) -> None:
        s = self.settings
        if t.misses < s.confirm_misses or now - t.since < s.confirm_seconds:
            return
        hold = (_Hold.DISABLED if not obs.enabled else _Hold.BEATS if obs.beats_slowly
                else _Hold.NONE if quorate else _Hold.NO_QUORUM)
        if hold is _Hold.NONE:
            t.state = HostState.DOWN
            t.hold = _Hold.NONE
            out.append(Verdict(VerdictKind.DOWN, host, t.since, t.misses, t.reason))
            return
        if hold is not t.hold:
            # Said once per cause, not every tick: the daemon logs it as a warning.
            t.hold = hold
            why = (_HOLD_WHY[hold] if hold is not _Hold.BEATS or not obs.beats_why
                   else f"held: {obs.beats_why}: a host that beats is never confirmed down")
            out.append(Verdict(VerdictKind.SUSPECT, host, t.since, t.misses,
                               f"{t.reason}; {why}"))

    def _maybe_back(
        self, host: HostId, t: _Track, now: float, seen: str, out: list[Verdict]
    ) -> None:
        if now - t.returning_since < self.settings.recover_hold_seconds:
            return
        held_for = now - t.returning_since
        out.append(Verdict(
            VerdictKind.BACK, host, t.since, t.misses,
            f"{seen} for {held_for:g} s",
        ))
        self._reset(t)

    @staticmethod
    def _start_run(t: _Track, now: float) -> None:
        t.state = HostState.SUSPECT
        t.since = now
        t.misses = 1
        t.hold = _Hold.NONE
        t.unquorate = False

    @staticmethod
    def _reset(t: _Track) -> None:
        t.state = HostState.UP
        t.since = 0.0
        t.misses = 0
        t.hold = _Hold.NONE
        t.returning_since = 0.0
        t.unquorate = False
