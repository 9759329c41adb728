"""Decide, the second stage of a monitoring cycle: the policy's verdict on what was observed.

Pure: no I/O, nothing changed. Two questions, in the order the cycle asks them:

1. :func:`small_window_reason`: are enough rows pending to judge a window at all? (Asked before
   observing, so a cycle with too few new rows costs one query and leaves every state untouched.)
2. :func:`decide_window`: the :class:`~tuneloop.monitoring.policy.Decision` on an observed window
   (:func:`tuneloop.monitoring.policy.decide`, rules in :mod:`tuneloop.monitoring.policy`), with the
   labels available for a retrain counted from the feedback cursor.
"""

from __future__ import annotations

from tuneloop.monitoring.observe import Observation, WindowSpan
from tuneloop.monitoring.policy import Action, Decision, DriftPolicy, decide
from tuneloop.monitoring.tasks import task_policy

__all__ = ["SKIP_SMALL_WINDOW", "Action", "Decision", "decide_window", "small_window_reason"]

SKIP_SMALL_WINDOW: Action = "skip_small_window"  # the action of a cycle whose pending rows are too few


def small_window_reason(span: WindowSpan, policy: DriftPolicy) -> str | None:
    """Why the pending rows are not judged yet, or None when they make a window.

    Args:
        span: the traffic logged since the last judged window.
        policy: its ``min_window`` is the smallest window judged.

    Returns:
        ``"<pending> new rows < min_window <min_window>"`` when too few rows are pending (the cycle
        then answers ``skip_small_window`` and the rows keep accumulating), else None.
    """
    if span.pending < policy.min_window:
        return f"{span.pending} new rows < min_window {policy.min_window}"
    return None


def decide_window(observation: Observation, policy: DriftPolicy) -> Decision:
    """The policy's verdict on an observed window.

    Args:
        observation: the window's signals, the policy state it starts from, and the labels logged
            since the last retrain (``observation.new_labels``).
        policy: thresholds and rules, fitted to the signals of the observation's task
            (:func:`tuneloop.monitoring.tasks.task_policy`).

    Returns:
        The Decision: ``action`` (none, wait, retrain, need_labels, cooldown, or skip_small_window when
        the report holds fewer than ``min_window`` rows), ``reason``, the fired signals, and the
        PolicyState to store for the next window.
    """
    return decide(observation.report, task_policy(policy, observation.task), observation.policy_state,
                  new_labels=observation.new_labels)
