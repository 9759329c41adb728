"""tuneloop: fine-tune a transformer, serve it, watch it drift, retrain, gate and hot-swap it.

Layers, bottom to top (imports flow upwards only; ``lint-imports`` checks the contract in
``pyproject.toml``):

* :mod:`tuneloop.state`: the home folder, the model registry and champion pointer, the traffic
  store's schema and migrations; no model code.
* :mod:`tuneloop.training`: data, fine-tuning, evaluation, saving a model version.
* :mod:`tuneloop.serving`: the BentoML service, batching, the traffic log writer, hot swap.
* :mod:`tuneloop.monitoring`: drift signals, the policy, the gate, retraining, metrics.
* :mod:`tuneloop.apps`: the ``tuneloop`` console script, the demo, the load generator.

The ``training``, ``serving`` and ``monitoring`` folders sit at the repository root (the product's
design card); ``tuneloop/training`` etc. are links to them, so that one package tree is what
Python, setuptools, import-linter and BentoML all see.
"""

from pathlib import Path as _Path

__version__ = "0.1.0"

# A copied source tree that did not keep the links (a bento's src/: BentoML copies files, not links)
# has the stage folders beside this package instead of inside it: find them there too.
_package_dir = _Path(__file__).resolve().parent
if not (_package_dir / "serving").is_dir() and (_package_dir.parent / "serving").is_dir():
    __path__.append(str(_package_dir.parent))  # noqa: F821 (a package's own __path__)
