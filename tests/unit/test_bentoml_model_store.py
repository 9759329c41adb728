"""The BentoML model-store bridge (``tuneloop/state/bentoml_model_store.py``) against the installed BentoML.

It is the one place that uses BentoML's private per-call store; when a BentoML release changes
those names this test fails first, naming the version to update the bridge for.
"""

from __future__ import annotations

import pytest


def test_bridge_creates_gets_and_lists_models_in_its_own_folder(tmp_path):
    import bentoml

    from tuneloop.state import bentoml_model_store as bridge

    version = bentoml.__version__
    a, b = tmp_path / "a", tmp_path / "b"
    try:
        with bridge.create_model(a, "bridge-test", labels={"k": "v"}, metadata={"score": 0.5}) as ref:
            with open(f"{ref.path}/weights.txt", "w") as fh:
                fh.write("w")
        got = bridge.get_model(a, str(ref.tag))
        listed = bridge.list_models(a, "bridge-test")
    except (ImportError, TypeError, AttributeError) as exc:
        pytest.fail(f"bentoml {version} changed its model-store internals ({exc!r}): "
                    "update tuneloop/state/bentoml_model_store.py")
    assert got.info.metadata == {"score": 0.5} and got.info.labels == {"k": "v"}
    assert open(got.path_of("weights.txt")).read() == "w"
    assert [str(m.tag) for m in listed] == [str(ref.tag)]
    assert (a / "bridge-test").is_dir() and not b.exists()  # the store is the folder given, nothing else
    with pytest.raises(bentoml.exceptions.NotFound):
        bridge.get_model(b, str(ref.tag))


def test_a_failed_write_saves_nothing(tmp_path):
    from bentoml.exceptions import NotFound

    from tuneloop.state import bentoml_model_store as bridge

    with pytest.raises(RuntimeError):
        with bridge.create_model(tmp_path, "bridge-test", labels={}, metadata={}):
            raise RuntimeError("write failed")
    with pytest.raises(NotFound):
        bridge.list_models(tmp_path, "bridge-test")
