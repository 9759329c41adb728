"""The model card: a Markdown file saved with every model (data, configuration, metrics, limits),
after Mitchell et al. 2019, "Model Cards for Model Reporting"."""

from __future__ import annotations

CARD_FILE = "MODEL_CARD.md"  # the card's name in every model version folder (classification and generation)


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def model_card(tag_name: str, metadata: dict, data_report: dict) -> str:
    """Render the card (Markdown) from a model's metadata and data report."""
    test = metadata["metrics"]["test"]
    cfg = metadata["train_config"]
    lines = [
        f"# Model card: {tag_name}",
        "",
        "## Model",
        f"- Base model: `{metadata['base_model']}`; transfer strategy `{cfg.get('method')}`"
        + (f" ({cfg.get('freeze_layers')} layers frozen)" if cfg.get("method") == "freeze" else "")
        + f"; {cfg.get('pooling', 'cls')} pooling",
        "- Predict through `tuneloop.training.predict.Classifier` (or `tuneloop.training.heads.forward_logits`): it applies the pooling "
        "recorded as `tuneloop_pooling` in `config.json`; a plain `AutoModelForSequenceClassification` forward uses the "
        "[CLS] pooler whatever the recorded pooling.",
        f"- Labels: {len(metadata['labels'])}; trained {metadata['epochs_run']:g} epochs in {metadata['train_seconds']} s",
        "",
        "## Data",
        f"- Source: `{data_report['source']}`; training rows {metadata['train_rows']} (after the validation split"
        f" and augmentation: {data_report.get('augmented_rows') or 'none'})",
        f"- SHA-256 of the training rows: `{metadata['data_sha256']}`",
        f"- Dropped: empty or too long {data_report.get('dropped_empty')}, duplicates {data_report.get('dropped_duplicates')}",
        f"- Train/test leakage (exact or near duplicates): {data_report.get('leaked_texts')} texts"
        f" ({data_report.get('leakage_action', 'warn')})",
        f"- Class balance: largest/smallest label = {data_report.get('imbalance_ratio')};"
        f" text length (chars) {data_report.get('length_quantiles')}",
        "",
        "## Test metrics",
        "| metric | value |",
        "| --- | --- |",
        *[f"| {k} | {_fmt(v)} |" for k, v in test.items() if k not in ("per_class", "calibration")],
        "",
        "## Configuration",
        "```yaml",
        *[f"{k}: {v}" for k, v in sorted(cfg.items())],
        "```",
        "",
        "## Limits",
        "- Trained for the label set above only: any other intent is forced into one of them.",
        f"- Texts are truncated to {cfg.get('max_length')} tokens; English only, as the base model.",
        "- Confidences are softmax outputs: see `evaluation/reliability.png` and the ECE before using them as probabilities.",
        "- Metrics come from one test split; live traffic that drifts from it will score differently (the monitor watches this).",
    ]
    if metadata.get("int8"):
        q = metadata["int8"]
        lines.insert(lines.index("## Limits"), f"## int8 (CPU)\n- accuracy change {q['accuracy_change']:+.4f}, "
                     f"speed-up x{q['speedup']:.2f} on {q['rows']} test texts\n")
    return "\n".join(lines) + "\n"
