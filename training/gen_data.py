"""Request -> reply data for the generation task: read, clean, cap, split.

The source is read like a classification data set (:func:`tuneloop.training.data.read_source`:
a folder with ``train.*`` and optionally ``test.*``, one file, or ``hf:NAME``). Frames get columns
``text`` (the request: ``cfg.text_column``, e.g. ``instruction``), ``reply`` (``cfg.response_column``)
and ``label`` (a group, ``cfg.label_column``, e.g. ``intent``: per-group sampling, stratified splits,
the data report). Replies are capped at the last sentence end within ``cfg.max_reply_tokens`` tokens
of the base model's tokenizer, in every split: a model trained on replies cut mid-sentence learns to
run to the cap and never stop (measured: 5 of 32 fine-tuned replies stopped within 96 tokens after
training on replies cut at 128 tokens, ``../shared/notes/generation.md``), and the test references
are the same capped replies the model was taught to write.
"""

from __future__ import annotations

import re

import pandas as pd

from tuneloop.training.data import (
    CONTROL_CHARS,
    DataError,
    DataReport,
    DataSplits,
    data_sha256,
    near_duplicate_key,
    read_source,
    stratified_split,
)

# a reply is cut only between sentences or lines; "4. " (a list item's number) is not a sentence end
SENTENCE_END = re.compile(r"(?<=[.!?:])(?<!\d\.)\s+|\n+")


def cap_reply(reply: str, count_tokens, max_tokens: int) -> str:
    """``reply`` cut after its last sentence (or line) that ends within ``max_tokens`` tokens;
    when even the first sentence is longer, its first ``max_tokens`` whitespace-separated words
    that fit. ``count_tokens(str) -> int`` counts tokens."""
    if count_tokens(reply) <= max_tokens:
        return reply
    kept = ""
    for m in SENTENCE_END.finditer(reply):
        candidate = reply[:m.start()]
        if count_tokens(candidate) > max_tokens:
            break
        kept = candidate
    if kept.strip():
        return kept.rstrip()
    words = reply.split()
    while words and count_tokens(" ".join(words)) > max_tokens:
        words = words[: max(1, len(words) * 3 // 4)] if len(words) > 1 else []
    return " ".join(words)


def _frame(raw: pd.DataFrame, cfg, where: str) -> pd.DataFrame:
    cols = [cfg.text_column, cfg.response_column, cfg.label_column]
    missing = [c for c in cols if c not in raw.columns]
    if missing:
        raise DataError(f"{where}: column(s) {missing} not found; columns are {list(raw.columns)} "
                        "(set --prompt-column / --response-column / --label-column)")
    df = pd.DataFrame({"text": raw[cfg.text_column], "reply": raw[cfg.response_column],
                       "label": raw[cfg.label_column]}).dropna()
    df["text"] = (df["text"].astype(str).str.replace(CONTROL_CHARS, "", regex=True)
                  .str.replace(r"\s+", " ", regex=True).str.strip())
    df["reply"] = df["reply"].astype(str).str.replace(CONTROL_CHARS, "", regex=True).str.strip()
    df["label"] = df["label"].astype(str).str.strip()
    return df


def load_generation_splits(cfg, tokenizer=None) -> DataSplits:
    """Read, clean, cap and split the request -> reply pairs of ``cfg`` (a ``TrainConfig`` with
    ``task="generation"``).

    Args:
        cfg: the training config (``data``, ``text_column``, ``response_column``, ``label_column``,
            ``max_reply_tokens``, ``max_text_chars``, ``max_train_per_label``, ``val_fraction``,
            ``test_fraction``, ``seed``, ``leakage``).
        tokenizer: counts reply tokens; default: the base model's (``cfg.base_model`` or SmolLM2).

    Returns:
        DataSplits with frames of columns ``text``, ``reply``, ``label``; ``labels`` are the groups.

    Raises:
        DataError: a missing path or column, no usable rows, or leakage with ``leakage="fail"``.
    """
    if tokenizer is None:
        from transformers import AutoTokenizer

        from tuneloop.training.base_llm import default_causal_base

        tokenizer = AutoTokenizer.from_pretrained(cfg.base_model or default_causal_base())

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    frames = read_source(cfg.data)
    report = DataReport(source=cfg.data, leakage_action=cfg.leakage)
    cleaned: dict[str, pd.DataFrame] = {}
    for split, raw in frames.items():
        report.rows_in[split] = len(raw)
        df = _frame(raw, cfg, f"{cfg.data} [{split}]")
        n0 = len(df)
        df = df[(df["text"] != "") & (df["reply"] != "") & (df["text"].str.len() <= cfg.max_text_chars)]
        report.dropped_empty[split] = n0 - len(df)
        n1 = len(df)
        df = df.drop_duplicates(subset=["text", "reply"]).reset_index(drop=True)
        report.dropped_duplicates[split] = n1 - len(df)
        cleaned[split] = df
    train = cleaned["train"]
    if train.empty:
        raise DataError(f"{cfg.data}: no usable request/reply rows in train")
    test = cleaned.get("test")
    if test is None:
        train, test = stratified_split(train, cfg.test_fraction, cfg.seed)
    keys = train["text"].map(near_duplicate_key)
    leaked = sorted(set(test["text"].map(near_duplicate_key)) & set(keys))
    report.leaked_texts, report.leaked_examples = len(leaked), leaked[:5]
    if leaked and cfg.leakage == "fail":
        raise DataError(f"{cfg.data}: {len(leaked)} test requests also appear in train, e.g. {leaked[:3]}")
    if leaked and cfg.leakage == "drop":
        train = train[~keys.isin(set(leaked))].reset_index(drop=True)
    if cfg.max_train_per_label:
        train = (train.sample(frac=1.0, random_state=cfg.seed).groupby("label", sort=False)
                 .head(cfg.max_train_per_label).reset_index(drop=True))
    train, validation = stratified_split(train, cfg.val_fraction, cfg.seed)
    capped = {}
    for name, df in (("train", train), ("validation", validation), ("test", test)):
        replies = [cap_reply(r, count, cfg.max_reply_tokens) for r in df["reply"]]
        capped[name] = sum(a != b for a, b in zip(replies, df["reply"]))
        if name != "train":  # the reviewer's whole reply, as live feedback is: the drift reference scores against it
            df["reply_full"] = df["reply"]
        df["reply"] = replies
    report.augmented_rows = {f"replies_capped_{k}": v for k, v in capped.items()}
    report.label_counts = {str(k): int(v) for k, v in train["label"].value_counts().sort_index().items()}
    report.imbalance_ratio = round(max(report.label_counts.values()) / min(report.label_counts.values()), 2)
    lengths = train["reply"].str.split().str.len()
    report.length_quantiles = {f"reply_words_q{int(q * 100):02d}": float(lengths.quantile(q)) for q in (0.05, 0.5, 0.95)}
    report.train_sha256 = data_sha256(train.assign(label=train["label"] + "\t" + train["reply"]))
    labels = sorted(set(train["label"]) | set(validation["label"]))
    return DataSplits(train=train.reset_index(drop=True), validation=validation.reset_index(drop=True),
                      test=test.reset_index(drop=True), labels=labels, report=report)
