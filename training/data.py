"""Load, validate, clean and split a labelled text data set.

Sources: a folder holding ``train.<ext>`` (and optionally ``test.<ext>``), a single file (a
stratified test split is made from it), or ``hf:NAME`` (the Hugging Face hub, only when the user
asks for it). Formats: CSV, JSONL/JSON, Parquet, all read through ``datasets``.

Every frame that leaves this module has exactly two columns, ``text`` and ``label`` (str).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
LEAK_EXAMPLES = 5  # leaked texts quoted in the report
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\ufeff]")


class DataError(ValueError):
    """The data cannot be used as given; the message says what to change."""


@dataclass
class DataReport:
    """What loading did to the data (saved with the model).

    Attributes:
        source: where the data came from.
        rows_in: rows read per split, before cleaning.
        dropped_empty: rows dropped for an empty text or label, per split.
        dropped_duplicates: exact duplicate (text, label) rows dropped, per split.
        leaked_texts: number of test texts that also appear in train (after cleaning).
        leaked_examples: a few of them.
        dropped_too_long: rows dropped for a text over the length cap, per split.
        leakage_action: what was done about leaked texts (warn, drop).
        label_counts: training rows per label (after the validation split).
        imbalance_ratio: largest over smallest label count in train.
        length_quantiles: training text length in characters at q05/q50/q95/q99/max.
        augmented_rows: training rows each augmentation method added.
        train_sha256: SHA-256 of the training rows (sorted ``text\\tlabel`` lines).
    """

    source: str
    rows_in: dict[str, int] = field(default_factory=dict)
    dropped_empty: dict[str, int] = field(default_factory=dict)
    dropped_duplicates: dict[str, int] = field(default_factory=dict)
    dropped_too_long: dict[str, int] = field(default_factory=dict)
    leaked_texts: int = 0
    leaked_examples: list[str] = field(default_factory=list)
    leakage_action: str = "warn"
    label_counts: dict[str, int] = field(default_factory=dict)
    imbalance_ratio: float = 1.0
    length_quantiles: dict[str, float] = field(default_factory=dict)
    augmented_rows: dict[str, int] = field(default_factory=dict)
    train_sha256: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DataSplits:
    """Train / validation / test frames (columns ``text``, ``label``) and the label list (sorted)."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    labels: list[str]
    report: DataReport


def _read_file(path: Path) -> pd.DataFrame:
    from datasets import load_dataset

    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unsupported format {path.suffix!r}; use one of {sorted(FORMATS)}")
    ds = load_dataset(fmt, data_files=str(path), split="train", keep_in_memory=True)
    return ds.to_pandas()


def _find_split(folder: Path, split: str) -> Path | None:
    for ext in FORMATS:
        candidate = folder / f"{split}{ext}"
        if candidate.exists():
            return candidate
    return None


def read_source(source: str) -> dict[str, pd.DataFrame]:
    """Read raw frames: ``{"train": df}`` or ``{"train": df, "test": df}``.

    Raises:
        DataError: the path does not exist, holds no ``train.*`` file, or has an unknown format.
    """
    if source.startswith("hf:"):
        from datasets import load_dataset

        ds = load_dataset(source[3:])
        frames = {}
        for split in ("train", "test"):
            if split in ds:
                df = ds[split].to_pandas()
                for col, feat in ds[split].features.items():  # ClassLabel ids -> names
                    if hasattr(feat, "int2str"):
                        df[col] = feat.int2str(df[col].tolist())
                frames[split] = df
        return frames
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    if path.is_file():
        return {"train": _read_file(path)}
    train = _find_split(path, "train")
    if train is None:
        raise DataError(f"{path} holds no train.csv / train.jsonl / train.parquet")
    frames = {"train": _read_file(train)}
    test = _find_split(path, "test")
    if test is not None:
        frames["test"] = _read_file(test)
    return frames


def normalise_label(label: str, mode: str = "strip") -> str:
    """``strip``: trim; ``lower``: trim + lowercase; ``snake``: lowercase, runs of non-alphanumerics -> ``_``."""
    label = label.strip()
    if mode in ("lower", "snake"):
        label = label.lower()
    if mode == "snake":
        label = re.sub(r"[^0-9a-z]+", "_", label).strip("_")
    return label


def near_duplicate_key(text: str) -> str:
    """The text lowercased with punctuation removed and whitespace collapsed: two texts with the
    same key are near duplicates (leakage check)."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def normalise(raw: pd.DataFrame, text_column: str, label_column: str, where: str,
              label_normalisation: str = "strip") -> pd.DataFrame:
    """Select and rename the text and label columns to ``text``/``label`` (str; control characters
    removed, whitespace collapsed; labels normalised as ``label_normalisation`` says).

    Raises:
        DataError: a column is missing (the message lists the columns there are).
    """
    missing = [c for c in (text_column, label_column) if c not in raw.columns]
    if missing:
        raise DataError(
            f"{where}: column(s) {missing} not found; columns are {list(raw.columns)} "
            f"(set --text-column / --label-column)"
        )
    df = pd.DataFrame({"text": raw[text_column], "label": raw[label_column]})
    df = df.dropna()
    df["text"] = (df["text"].astype(str).str.replace(CONTROL_CHARS, "", regex=True)
                  .str.replace(r"\s+", " ", regex=True).str.strip())
    df["label"] = df["label"].astype(str).map(lambda l: normalise_label(l, label_normalisation))
    return df


def clean(df: pd.DataFrame, max_text_chars: int | None = None) -> tuple[pd.DataFrame, int, int]:
    """Drop empty texts/labels, texts over ``max_text_chars`` (counted with the empties), then exact
    duplicate rows. Returns (frame, n_empty_or_too_long, n_duplicates)."""
    n0 = len(df)
    df = df[(df["text"] != "") & (df["label"] != "")]
    if max_text_chars:
        df = df[df["text"].str.len() <= max_text_chars]
    n_empty = n0 - len(df)
    n1 = len(df)
    df = df.drop_duplicates(subset=["text", "label"]).reset_index(drop=True)
    return df, n_empty, n1 - len(df)


def data_sha256(df: pd.DataFrame) -> str:
    """SHA-256 of the sorted ``text\\tlabel`` lines: the same rows in any order give the same hash."""
    lines = sorted(f"{t}\t{l}" for t, l in zip(df["text"], df["label"]))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def stratified_split(df: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``df`` into (rest, held_out) with ``fraction`` of every label held out (at least one
    row of a label with 2+ rows, none of a label with one row)."""
    held = []
    for _, group in df.groupby("label", sort=True):
        n = int(round(len(group) * fraction))
        n = max(1, n) if len(group) >= 2 else 0
        held.append(group.sample(n=n, random_state=seed) if n else group.iloc[:0])
    held_df = pd.concat(held)
    rest = df.drop(index=held_df.index)
    return rest.reset_index(drop=True), held_df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def load_splits(
    source: str,
    text_column: str = "text",
    label_column: str = "category",
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 42,
    max_train_per_label: int | None = None,
    max_text_chars: int | None = 1000,
    label_normalisation: str = "strip",
    leakage: str = "warn",
) -> DataSplits:
    """Read, validate, clean and split a data set.

    Returns:
        DataSplits whose train/validation come from the source's train split (stratified by
        label) and whose test is the source's test split (or a stratified share of the single file).

    Raises:
        DataError: missing path/columns, fewer than 2 labels, test labels unknown to train, or
            leakage found with ``leakage="fail"``.
    """
    frames = read_source(source)
    report = DataReport(source=source)
    cleaned = {}
    for split, raw in frames.items():
        report.rows_in[split] = len(raw)
        df, n_empty, n_dup = clean(normalise(raw, text_column, label_column, f"{source} [{split}]",
                                             label_normalisation), max_text_chars)
        report.dropped_empty[split], report.dropped_duplicates[split] = n_empty, n_dup
        cleaned[split] = df
    train = cleaned["train"]
    if train["label"].nunique() < 2:
        raise DataError(f"{source}: found {train['label'].nunique()} label(s) in train; a classifier needs at least 2")
    test = cleaned.get("test")
    if test is None:
        train, test = stratified_split(train, test_fraction, seed)
    unknown = sorted(set(test["label"]) - set(train["label"]))
    if unknown:
        raise DataError(f"{source}: test labels never seen in train: {unknown[:10]}")
    train_keys = train["text"].map(near_duplicate_key)
    leaked = sorted(set(test["text"].map(near_duplicate_key)) & set(train_keys))
    report.leaked_texts, report.leaked_examples, report.leakage_action = len(leaked), leaked[:LEAK_EXAMPLES], leakage
    if leaked:
        if leakage == "fail":
            raise DataError(f"{source}: {len(leaked)} test texts also appear in train (exact or near duplicates), e.g. "
                            f"{leaked[:3]}; remove them or set leakage to warn/drop")
        log.warning("%d test texts also appear in train (leakage, near duplicates included), e.g. %r%s", len(leaked),
                    leaked[:3], "; dropped from train" if leakage == "drop" else "")
        if leakage == "drop":
            train = train[~train_keys.isin(set(leaked))].reset_index(drop=True)
    if max_train_per_label:
        train = (train.sample(frac=1.0, random_state=seed).groupby("label", sort=False).head(max_train_per_label)
                 .reset_index(drop=True))
    train, validation = stratified_split(train, val_fraction, seed)
    report.label_counts = {str(k): int(v) for k, v in train["label"].value_counts().sort_index().items()}
    report.imbalance_ratio = round(max(report.label_counts.values()) / min(report.label_counts.values()), 2)
    lengths = train["text"].str.len()
    report.length_quantiles = {f"q{int(q * 100):02d}": float(lengths.quantile(q)) for q in (0.05, 0.5, 0.95, 0.99)}
    report.length_quantiles["max"] = float(lengths.max())
    report.train_sha256 = data_sha256(train)
    labels = sorted(set(train["label"]) | set(validation["label"]))
    return DataSplits(train=train, validation=validation, test=test.reset_index(drop=True), labels=labels, report=report)


def load_splits_for(cfg) -> DataSplits:
    """:func:`load_splits` with every data field of a ``TrainConfig``."""
    return load_splits(cfg.data, cfg.text_column, cfg.label_column, cfg.val_fraction, cfg.test_fraction, cfg.seed,
                       cfg.max_train_per_label, cfg.max_text_chars, cfg.label_normalisation, cfg.leakage)
