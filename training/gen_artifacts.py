"""Everything saved with a fine-tuned generator: merged weights + tokenizer (chat template), the
drift reference, ``evaluation/`` (fine-tuned and base metrics, the qualitative review file), the
data report, the model card, and the BentoML metadata."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tuneloop.state.home import Home
from tuneloop.state.registry import REFERENCE_FILE, save_model
from tuneloop.training.card import CARD_FILE
from tuneloop.training.config import TrainConfig
from tuneloop.training.data import DataSplits

EVALUATION_DIR = "evaluation"
SAMPLES_FILE = "samples.jsonl"  # (prompt, reference, base reply, fine-tuned reply) per scored test row
SUMMARY_KEYS = ("perplexity", "rouge1", "rouge2", "rougeL", "bleu", "chrf", "stop_rate", "placeholder_fidelity",
                "length_ratio", "mean_logprob", "n", "n_perplexity", "max_new_tokens")


def generation_reference(samples: pd.DataFrame, prompts: pd.DataFrame, size: int, seed: int) -> pd.DataFrame:
    """The drift reference of a generator.

    Args:
        samples: the scored test rows (columns ``text``, ``reply`` (reference), ``fine_tuned_reply``,
            ``finish_reason``, ``completion_tokens``, ``mean_logprob``): the model's own replies.
        prompts: rows whose requests (column ``text``) describe the expected prompts.
        size: most prompt rows kept; seed: their sample's seed.

    Returns:
        Columns ``text`` (prompt), ``reply`` (the model's reply; None on prompt-only rows),
        ``finish_reason``, ``completion_tokens``, ``mean_logprob``, ``true_reply`` (the reference
        reply where known: ``reply_full``, the uncapped reply, when the rows have it, because live
        feedback is a reviewer's whole reply; measured on a demo's 16 scored rows, ROUGE-L against
        the capped replies was 0.336 and against the whole ones 0.272, a gap that made ``rouge_drop``
        read +0.1 on in-distribution traffic).
    """
    scored = pd.DataFrame({"text": samples["text"], "reply": samples["fine_tuned_reply"],
                           "finish_reason": samples["finish_reason"], "completion_tokens": samples["completion_tokens"],
                           "mean_logprob": samples["mean_logprob"], "true_reply": samples.get("reply_full", samples["reply"])})
    rest = prompts[~prompts["text"].isin(set(scored["text"]))]
    rest = rest.sample(n=min(max(size - len(scored), 0), len(rest)), random_state=seed)
    extra = pd.DataFrame({"text": rest["text"].tolist(), "reply": None, "finish_reason": None, "completion_tokens": None,
                          "mean_logprob": None,
                          "true_reply": rest.get("reply_full", rest.get("reply")).tolist() if "reply" in rest else None})
    # records, not concat: concat of all-None columns is deprecated (pandas FutureWarning) and would change dtypes
    return pd.DataFrame.from_records(scored.to_dict("records") + extra.to_dict("records"), columns=list(scored.columns))


def _summary(metrics: dict | None) -> dict:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in (metrics or {}).items() if k in SUMMARY_KEYS}


def generation_card(name: str, metadata: dict, report: dict) -> str:
    """The model card (Markdown; Mitchell et al. 2019) of a generator: base, method, data, the
    fine-tuned and base metrics side by side, configuration and limits."""
    cfg, test, base = metadata["train_config"], metadata["metrics"]["test"], metadata["metrics"].get("base_test") or {}
    rows = [f"| {k} | {test[k]:.4f} | {base[k]:.4f} |" if isinstance(base.get(k), float) and isinstance(test.get(k), float)
            else f"| {k} | {test.get(k)} | {base.get(k, '')} |" for k in SUMMARY_KEYS if k in test]
    return "\n".join([
        f"# Model card: {name}", "",
        "## Model",
        f"- Base model: `{metadata['base_model']}` (SmolLM2-135M-Instruct is Apache-2.0; its packaged weights were "
        "4-bit Q4_1 quantised, dequantised to fp32 before fine-tuning)" if "SmolLM2" in metadata["base_model"]
        else f"- Base model: `{metadata['base_model']}`",
        f"- Method `{cfg.get('method')}`" + (" (LoRA adapters merged into the weights)" if cfg.get("method") == "lora" else "")
        + f"; trained {metadata['epochs_run']:g} epochs in {metadata['train_seconds']} s on {metadata['train_rows']} rows",
        "- Prompts go through the saved chat template (`tokenizer.apply_chat_template(..., add_generation_prompt=True)`);"
        " replies end with the end-of-sequence token `" + str(metadata.get("eos_token")) + "`.",
        "", "## Data",
        f"- Source: `{report['source']}`; rows per group {report.get('label_counts')}",
        f"- Replies cut at a sentence end within {cfg.get('max_reply_tokens')} tokens: {report.get('augmented_rows')}",
        f"- SHA-256 of the training rows: `{metadata['data_sha256']}`; leakage: {report.get('leaked_texts')} requests",
        "", "## Test metrics (fine-tuned | base, same rows)",
        "| metric | fine-tuned | base |", "| --- | --- | --- |", *rows,
        "", f"Replies: greedy, up to {test.get('max_new_tokens')} new tokens; `evaluation/{SAMPLES_FILE}` holds "
        "each scored prompt, its reference, the base reply and the fine-tuned reply for review.",
        "", "## Configuration", "```yaml", *[f"{k}: {v}" for k, v in sorted(cfg.items())], "```",
        "", "## Limits",
        "- A 135 M-parameter model: fluent in the domain's phrasing, not a source of facts; replies keep "
        "`{{placeholders}}` for a deployment to fill.",
        "- English only, as the base model; metrics come from one test sample and overlap-based scores (ROUGE, BLEU) "
        "reward wording close to the references, not correctness.",
    ]) + "\n"


def save_generator(home: Home, cfg: TrainConfig, splits: DataSplits, result, extra_meta: dict | None = None,
                   reference_rows: pd.DataFrame | None = None) -> str:
    """Save a generation :class:`tuneloop.training.train.TrainResult` as a new model version; returns the tag.

    The version folder holds ``model.safetensors``, ``config.json``, ``generation_config.json``, the
    tokenizer files and chat template, ``reference.jsonl``, ``evaluation/`` (``metrics.json`` with
    fine-tuned and base figures, ``samples.jsonl``), ``data_report.json`` and ``MODEL_CARD.md``.
    ``reference_rows`` (column ``text``) replaces the validation and test requests as the reference
    prompts (the loop re-baselines on traffic).
    """
    from tuneloop.training.base_llm import BASE_NAME

    gen, samples = result.classifier, result.extra["samples"]
    prompts = (reference_rows if reference_rows is not None and not reference_rows.empty
               else pd.concat([splits.validation, splits.test], ignore_index=True))
    reference = generation_reference(samples, prompts, cfg.reference_size, cfg.seed)
    metadata = {
        "labels": splits.labels,
        "metrics": {"test": _summary(result.test_metrics), "validation": result.val_metrics,
                    "base_test": _summary(result.extra.get("base_test_metrics")) or None},
        "base_model": Path(cfg.base_model).name if cfg.base_model else BASE_NAME,
        "eos_token": gen.tokenizer.eos_token,
        "train_config": cfg.model_dump(mode="json"),
        "data_sha256": splits.report.train_sha256,
        "train_rows": result.train_rows,
        "epochs_run": result.epochs_run,
        "train_seconds": round(result.seconds, 1),
        "tokens_per_second": round(result.extra.get("tokens_per_second", 0.0), 1),
        "reference_sample": {"file": REFERENCE_FILE, "rows": len(reference),
                             "source": "test replies + requests" if reference_rows is None else "recent traffic"},
        **(extra_meta or {}),
    }

    def write(path: Path) -> None:
        gen.model.save_pretrained(path, safe_serialization=True)
        gen.tokenizer.save_pretrained(path)
        reference.to_json(path / REFERENCE_FILE, orient="records", lines=True)
        (path / EVALUATION_DIR).mkdir(exist_ok=True)
        (path / EVALUATION_DIR / "metrics.json").write_text(json.dumps(
            {"fine_tuned": result.test_metrics, "base": result.extra.get("base_test_metrics"),
             "validation": result.val_metrics}, indent=1, default=float))
        cols = [c for c in ("text", "reply", "base_reply", "fine_tuned_reply", "finish_reason", "label") if c in samples]
        samples[cols].rename(columns={"text": "prompt", "reply": "reference"}).to_json(
            path / EVALUATION_DIR / SAMPLES_FILE, orient="records", lines=True)
        (path / "data_report.json").write_text(json.dumps(splits.report.to_dict(), indent=1))
        (path / CARD_FILE).write_text(generation_card(cfg.model_name, metadata, splits.report.to_dict()))

    return save_model(home, write, name=cfg.model_name, metadata=metadata,
                      labels={"base": metadata["base_model"], "method": cfg.method, "task": "generation"})
