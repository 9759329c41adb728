"""What ``tuneloop models promote`` and ``tuneloop models rollback`` do, as plain functions.

A promotion by hand goes through the same gate as the loop's (:func:`tuneloop.monitoring.retrain.gate_stored`:
the champion against the challenger on the champion's holdout, the test split of its data) unless
forced; a blocked tag (rolled back earlier, :meth:`tuneloop.state.events.EventLog.is_blocked`) is
refused unless forced, and a forced promotion of it records ``unblocked``. Every step is in the event
log with actor ``cli``: the gate's verdict (``gated``), the promotion (``promoted``), the rollback
(``rolled_back`` + ``blocked``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tuneloop.monitoring.retrain import RetrainConfig, gate_stored, record_gate
from tuneloop.state.events import UNBLOCKED, EventLog
from tuneloop.state.home import Home
from tuneloop.state.registry import ModelNotFoundError, get_model, promote, read_champion, rollback, rollback_target

ACTOR = "cli"  # the events' actor for everything done through `tuneloop models`
MAX_REASON_CHARS = 500  # a reason is a sentence for the audit trail, not a document


class PromotionRefused(Exception):
    """The promotion did not happen: the gate kept the champion, or the tag is blocked. ``outcome``
    says which (its ``promoted`` is False)."""

    def __init__(self, outcome: PromoteOutcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


@dataclass
class PromoteOutcome:
    """What ``models promote`` did.

    Attributes:
        tag: the model asked for.
        promoted: it is now the champion.
        previous: the champion before (None when there was none).
        forced: ``--force``: no gate, blocks lifted.
        blocked: the tag was blocked when asked for.
        unblocked: a forced promotion recorded ``unblocked``.
        gate: the gate's verdict (``GateResult`` as a dict: champion, challenger, promoted, reason,
            holdout_rows), None when it did not run.
        message: one line for the terminal.
    """

    tag: str
    promoted: bool
    previous: str | None
    forced: bool
    blocked: bool
    unblocked: bool
    gate: dict | None
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


def check_reason(reason: str) -> str:
    """``reason`` stripped.

    Raises:
        ValueError: empty, or longer than :data:`MAX_REASON_CHARS`.
    """
    reason = reason.strip()
    if not reason:
        raise ValueError("give a reason (--reason 'why'): it goes into the audit trail")
    if len(reason) > MAX_REASON_CHARS:
        raise ValueError(f"the reason has {len(reason)} characters; keep it under {MAX_REASON_CHARS}")
    return reason


def promote_model(home: Home, tag: str, reason: str, cfg: RetrainConfig, *, force: bool = False) -> PromoteOutcome:
    """Make ``tag`` the champion, through the gate unless ``force``.

    Args:
        home: the tuneloop home.
        tag: the stored model to promote (``name:version``).
        reason: why (the ``promoted`` event's reason); at most :data:`MAX_REASON_CHARS` characters.
        cfg: the retraining settings whose ``gate`` judges (and whose preset reads the champion's data).
        force: skip the gate and promote a blocked tag (recording ``unblocked``).

    Returns:
        The PromoteOutcome of a promotion (``promoted`` True).

    Raises:
        ModelNotFoundError: ``tag`` is not in the store.
        ValueError: bad reason; ``tag`` is the champion already; the two models are of different tasks.
        tuneloop.training.data.DataError: the champion's data cannot be read for the gate (``force`` skips it).
        PromotionRefused: the gate kept the champion, or ``tag`` is blocked (without ``force``).
    """
    reason = check_reason(reason)
    tag = str(get_model(home, tag).tag)
    pointer = read_champion(home)
    previous = pointer.tag if pointer else None
    if tag == previous:
        raise ValueError(f"{tag} is the champion already")
    events = EventLog(home.store_url)
    blocked = events.is_blocked(tag)
    if blocked and not force:
        raise PromotionRefused(PromoteOutcome(tag, False, previous, False, True, False, None,
                                              f"{tag} is blocked (rolled back earlier): --force promotes it anyway"))
    gate = None
    if previous is not None and not force:
        verdict = gate_stored(home, previous, tag, cfg)
        record_gate(home, tag, verdict, ACTOR)
        gate = asdict(verdict)
        if not verdict.promoted:
            raise PromotionRefused(PromoteOutcome(tag, False, previous, False, False, False, gate,
                                                  f"gate refused {tag}: {verdict.reason}"))
    if blocked:
        events.record(UNBLOCKED, f"forced promotion: {reason}", tag=tag, actor=ACTOR)
    how = "forced (no gate)" if force else ("gate passed" if gate else "no champion to gate against")
    promote(home, tag, reason, actor=ACTOR,
            detail={"forced": force, "gate": gate["reason"] if gate else None, "how": how})
    return PromoteOutcome(tag, True, previous, force, blocked, blocked, gate,
                          f"{tag} is the champion ({how}); it replaced {previous or 'no model'}")


@dataclass
class RollbackOutcome:
    """What ``models rollback`` did: ``champion`` (now serving), ``reverted`` (the tag it replaced),
    ``blocked`` (``reverted`` may not be promoted again without ``--force``), ``reason``."""

    champion: str
    reverted: str
    blocked: bool
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def rollback_model(home: Home, reason: str, *, block: bool = True) -> RollbackOutcome:
    """Revert the champion to the previous one (:func:`tuneloop.state.registry.rollback`, actor ``cli``).

    Raises:
        ValueError: bad reason.
        ModelNotFoundError: no champion, or no earlier unblocked champion to go back to.
    """
    reason = check_reason(reason)
    pointer = read_champion(home)
    if pointer is None:
        raise ModelNotFoundError(f"no champion model in {home.root}: nothing to roll back")
    rollback_target(home)  # raises before anything moves when there is nowhere to go
    new = rollback(home, reason, actor=ACTOR, block=block)
    return RollbackOutcome(champion=new.tag, reverted=pointer.tag, blocked=block, reason=reason)
