"""The monitor's metric values: small thread-safe gauges and counters held as plain Python numbers,
and the custom collector (prometheus_client's public ``Collector`` / ``*MetricFamily`` API) that hands
them to a registry. :class:`tuneloop.monitoring.exporter.MonitorMetrics` declares the monitor's metrics
with them; they never go to PROMETHEUS_MULTIPROC_DIR files.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class _Series:
    """One labelled series of a :class:`Gauge` or :class:`Counter` (what ``.labels(...)`` returns)."""

    def __init__(self, family: Family, key: tuple[str, ...]) -> None:
        self._family, self._key = family, key

    def set(self, value: float) -> None:
        """Set the value (gauges only)."""
        self._family.write(self._key, float(value), add=False)

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (a counter only goes up)."""
        self._family.write(self._key, float(amount), add=True)


class Family:
    """Values of one metric by label values, in a plain dict behind a lock (the HTTP thread reads them)."""

    kind = "gauge"

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...] = ()) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self._lock = threading.Lock()
        self._values: dict[tuple[str, ...], float] = {} if self.labelnames else {(): 0.0}

    def labels(self, *values: object, **by_name: object) -> _Series:
        """The series with these label values (positional, or by label name), created at 0 if new.

        Raises:
            ValueError: the metric has no labels, or the values do not match its label names.
        """
        if by_name:
            if values or set(by_name) != set(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values} and {by_name}")
            values = tuple(by_name[n] for n in self.labelnames)
        if not self.labelnames or len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        key = tuple(str(v) for v in values)
        with self._lock:
            self._values.setdefault(key, 0.0)
        return _Series(self, key)

    def remove(self, *values: object) -> None:
        """Drop the series with these label values (no error if absent)."""
        with self._lock:
            self._values.pop(tuple(str(v) for v in values), None)

    def clear(self) -> None:
        """Drop every labelled series."""
        if self.labelnames:
            with self._lock:
                self._values.clear()

    def write(self, key: tuple[str, ...], value: float, add: bool) -> None:
        if self.kind == "counter" and (not add or value < 0):
            raise ValueError(f"counter {self.name} only goes up (inc with an amount >= 0)")
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + value if add else value

    def _unlabelled(self) -> _Series:
        if self.labelnames:
            raise ValueError(f"{self.name} has labels {self.labelnames}: use .labels(...) first")
        return _Series(self, ())

    def family(self, with_samples: bool = True) -> Metric:
        """The metric family Prometheus reads (a copy of the values, taken under the lock)."""
        kind = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        out = kind(self.name, self.documentation, labels=self.labelnames)
        if with_samples:
            with self._lock:
                items = list(self._values.items())
            for key, value in items:
                out.add_metric(list(key), value)
        return out


class Gauge(Family):
    """A gauge: ``.set(v)`` / ``.inc()`` without labels, ``.labels(...).set(v)`` with them."""

    def set(self, value: float) -> None:
        """Set the unlabelled value."""
        self._unlabelled().set(value)

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` to the unlabelled value."""
        self._unlabelled().inc(amount)


class Counter(Family):
    """A counter, exported as ``<name>_total``: ``.labels(...).inc()``."""

    kind = "counter"

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (>= 0) to the unlabelled value."""
        self._unlabelled().inc(amount)


class MetricsCollector(Collector):
    """Hands a registry the current values of a list of gauges and counters."""

    def __init__(self, families: list[Family]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            yield family.family()

    def describe(self) -> Iterator[Metric]:
        for family in self._families:
            yield family.family(with_samples=False)
