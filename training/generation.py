"""Reply generation as a :class:`tuneloop.training.task.Task`: a causal language model fine-tuned on
a domain's request -> reply pairs (SmolLM2-135M-Instruct by default).

Rows have columns ``text`` (the request, the prompt), ``reply`` (the reference reply) and
``label`` (a group such as the intent: per-group sampling, stratified splits, the data report). A
predictor is a :class:`tuneloop.training.generator.Generator`. The gate compares ROUGE-L of greedy
replies on a seeded sample (``rougeL``, higher is better) and guards perplexity on every holdout
row (``perplexity``, lower is better).
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

EVAL_ROWS = 48  # greedy replies scored per evaluation on CPU: ~1 min for SmolLM2-135M at batch 8 (README)
EVAL_MAX_NEW_TOKENS = 160  # above the training replies' cap (quick: 96 tokens), so stopping is measurable


class GenerationTask:
    """Request -> reply generation (see the module docstring).

    Attributes:
        eval_rows: rows whose greedy replies are scored (a seeded sample; perplexity uses all).
        max_new_tokens: token budget of each scored reply.
    """

    name = "generation"
    primary_metric = "rougeL"
    guard_metric = "perplexity"  # the gate's second check; lower is better
    guard_higher_is_better = False

    def __init__(self, eval_rows: int = EVAL_ROWS, max_new_tokens: int = EVAL_MAX_NEW_TOKENS, seed: int = 0) -> None:
        self.eval_rows, self.max_new_tokens, self.seed = eval_rows, max_new_tokens, seed

    def with_config(self, cfg) -> GenerationTask:
        """This task evaluating as ``cfg`` says (``eval_rows`` greedy replies of up to
        ``eval_max_new_tokens`` tokens): the gate scores a challenger as its training run did."""
        return GenerationTask(eval_rows=cfg.eval_rows, max_new_tokens=cfg.eval_max_new_tokens, seed=self.seed)

    def load_splits(self, cfg):
        """``tuneloop.training.gen_data.load_generation_splits(cfg)``."""
        from tuneloop.training.gen_data import load_generation_splits

        return load_generation_splits(cfg)

    def fine_tune(self, cfg, splits, extra_train: pd.DataFrame | None = None):
        """``tuneloop.training.gen_train.fine_tune_generator``."""
        from tuneloop.training.gen_train import fine_tune_generator

        return fine_tune_generator(cfg, splits, extra_train=extra_train)

    def save(self, home, cfg, splits, result, extra_meta: dict | None = None,
             reference_rows: pd.DataFrame | None = None) -> str:
        """``tuneloop.training.gen_artifacts.save_generator`` with the task recorded in the metadata."""
        from tuneloop.training.gen_artifacts import save_generator
        from tuneloop.training.task import TASK_KEY

        return save_generator(home, cfg, splits, result, extra_meta={TASK_KEY: self.name, **(extra_meta or {})},
                              reference_rows=reference_rows)

    def load_predictor(self, model_dir: Path | str, device: str | None = None, precision: str | None = None):
        """``Generator.load(model_dir, device, precision)``."""
        from tuneloop.training.generator import Generator

        return Generator.load(model_dir, device=device, precision=precision)

    def evaluate(self, predictor, rows: pd.DataFrame) -> dict[str, float]:
        """Perplexity of every reference reply, and on a seeded sample of :attr:`eval_rows` rows the
        greedy replies' ROUGE-1/2/L, BLEU, chrF, placeholder fidelity, length ratio and stop rate.

        Raises:
            ValueError: ``rows`` is empty.
        """
        if rows.empty:
            raise ValueError("evaluation needs at least one row")
        return evaluate_generator(predictor, rows, self.eval_rows, self.max_new_tokens, self.seed)[0]

    def summary(self, result) -> str:
        """The test figures of a training result, fine-tuned and (when measured) base side by side."""
        m, b = result.test_metrics, result.extra.get("base_test_metrics") or {}
        keys = ("perplexity", "rougeL", "bleu", "chrf", "stop_rate", "placeholder_fidelity", "length_ratio")

        def fmt(d: dict) -> str:
            return " ".join(f"{k}={d[k]:.4f}" for k in keys if isinstance(d.get(k), float))

        lines = [f"test (replies n={m['n']}, perplexity n={m['n_perplexity']}) fine-tuned: {fmt(m)}"]
        if b:
            lines.append(f"test base (same rows): {fmt(b)}")
        lines.append(f"({result.epochs_run:g} epochs, {result.seconds:.0f} s, "
                     f"{result.extra.get('tokens_per_second', 0):.0f} tokens/s)")
        return "\n".join(lines)

    def warm_up(self, predictor):
        """One short greedy reply (the first ``generate`` call allocates its caches)."""
        return predictor.generate(["Hello"], max_new_tokens=2)


def evaluate_generator(gen, rows: pd.DataFrame, sample_rows: int = EVAL_ROWS, max_new_tokens: int = EVAL_MAX_NEW_TOKENS,
                       seed: int = 0, batch_size: int = 8,
                       perplexity_rows: int | None = None, progress: str | None = None) -> tuple[dict[str, float], pd.DataFrame]:
    """Score ``gen`` on ``rows`` (columns ``text``, ``reply``): perplexity on all rows (or a seeded
    sample of ``perplexity_rows``), greedy replies on a seeded sample of ``sample_rows``.

    Returns:
        (metrics, sample): metrics ``perplexity`` (all rows), ``n_perplexity``, ``rouge1``,
        ``rouge2``, ``rougeL``, ``bleu``, ``chrf`` (0..100), ``placeholder_fidelity``,
        ``length_ratio``, ``stop_rate``, ``mean_logprob``, ``n`` (sampled rows), ``max_new_tokens``;
        sample: the sampled rows with the generated ``generated``, ``finish_reason``,
        ``completion_tokens`` and ``mean_logprob`` columns.

    ``progress`` (a label such as ``"evaluate fine-tuned"``) shows a bar per batch of replies on a
    terminal, a line at most every 10 s elsewhere; None: silent.
    """
    import sys

    from tuneloop.training.gen_metrics import reply_scores, stop_rate
    from tuneloop.training.progress import format_duration, on_terminal

    ppl_rows = rows if perplexity_rows is None else rows.sample(n=min(perplexity_rows, len(rows)), random_state=seed)
    ppl = gen.perplexity(ppl_rows["text"].tolist(), ppl_rows["reply"].tolist(), batch_size=batch_size)
    sample = rows.sample(n=min(sample_rows, len(rows)), random_state=seed).reset_index(drop=True)
    order = sample["text"].str.len().argsort(kind="stable").tolist()  # similar lengths batch together
    outputs: dict[int, object] = {}
    batches = range(0, len(order), batch_size)
    bar = None
    if progress and on_terminal():
        from tqdm.auto import tqdm

        bar = tqdm(total=len(order), desc=progress, unit="reply")
    started = last_line = time.perf_counter()
    for start in batches:
        idx = order[start:start + batch_size]
        for i, c in zip(idx, gen.generate(sample["text"].iloc[idx].tolist(), max_new_tokens=max_new_tokens)):
            outputs[i] = c
        if bar is not None:
            bar.update(len(idx))
        elif progress and (time.perf_counter() - last_line >= 10 or len(outputs) == len(order)):
            last_line = time.perf_counter()
            print(f"{progress}: {len(outputs)}/{len(order)} replies, {format_duration(last_line - started)} elapsed",
                  file=sys.stderr, flush=True)
    if bar is not None:
        bar.close()
    completions = [outputs[i] for i in range(len(sample))]
    sample = sample.assign(generated=[c.text for c in completions], finish_reason=[c.finish_reason for c in completions],
                           completion_tokens=[c.completion_tokens for c in completions],
                           mean_logprob=[c.mean_logprob for c in completions])
    metrics = {"perplexity": ppl, "n_perplexity": len(ppl_rows),
               **reply_scores(sample["generated"].tolist(), sample["reply"].tolist()),
               "stop_rate": stop_rate(sample["finish_reason"].tolist()),
               "mean_logprob": sum(c.mean_logprob for c in completions) / len(completions),
               "n": len(sample), "max_new_tokens": max_new_tokens}
    return metrics, sample
