"""The data types of the drift signals: their names, how they are computed (``DriftConfig``), one
signal's result and one window's report. Pure pydantic; ``tuneloop.monitoring.drift`` fills them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TEXT, DESCRIPTORS, EMBEDDING = "text_drift", "descriptor_drift", "embedding_drift"
LABEL, CONFIDENCE, ACCURACY = "label_drift", "confidence_drift", "accuracy_drop"
ALL_SIGNALS = (TEXT, DESCRIPTORS, EMBEDDING, LABEL, CONFIDENCE, ACCURACY)  # classification's six
DESCRIPTOR_NAMES = ("text_length", "oov_share", "non_letter_share")
# Generation (tuneloop.monitoring.generation): prompt drift (text, embeddings), reply descriptor drift, the
# model's own token log-probabilities (confidence), and quality from feedback (ROUGE-L, bad ratings).
REPLY, ROUGE, RATING = "reply_drift", "rouge_drop", "bad_rating_rise"
GENERATION_SIGNALS = (TEXT, EMBEDDING, REPLY, CONFIDENCE, ROUGE, RATING)
REPLY_DESCRIPTOR_NAMES = ("reply_length", "stop_rate", "placeholder_rate")
FEEDBACK_SIGNALS = (ACCURACY, ROUGE, RATING)  # fire on enough feedback and a drop that matters, like accuracy_drop
KNOWN_SIGNALS = tuple(dict.fromkeys(ALL_SIGNALS + GENERATION_SIGNALS))  # every task's signal names
MIN_ROWS = 10  # below this the domain classifier's held-out half may hold no window row at all
FAMILY_ALPHA = 0.05  # family-wise false-alarm level per window, all signals together (README, "Drift policy")
DEFAULT_ALPHA = FAMILY_ALPHA / len(ALL_SIGNALS)  # Bonferroni over the six signals of DriftPolicy's default
# The reference sample training saves is 1,000 validation rows (README, "Drift policy"): all of them.
MAX_REFERENCE_ROWS = 1000
# Window cap of the drift tests and the embedding pass: ~1.5 s per 500 texts on 2 quiet cores keeps a
# 1,000-request cycle at 3.5-4.2 s, inside its 10 s budget (README benchmark table, "cost of one cycle").
MAX_CURRENT_ROWS = 500
# Null draws of the permutation tests: p-value resolution 1/2001 ~ 5e-4, 17x finer than the per-signal
# level 0.05/6; the label test's p therefore never falls below DriftPolicy's strong_alpha 1e-4 (policy rule 4).
PERMUTATIONS = 2000
# Validation floor of the draws, a chosen bound for quick tests: at 100 draws the smallest p-value,
# 1/101 ~ 0.0099, is above the default per-signal level 0.05/6 ~ 0.0083.
MIN_PERMUTATIONS = 100
# accuracy_drop needs this many labels in the window: a chosen default (README signal table: ">= 30 labels");
# DriftPolicy.min_labels_for_accuracy has the same default and drift_config() passes it on.
MIN_LABELS = 30
MAX_ACCURACY_DROP = 0.10  # absolute drop that matters in practice: a chosen default (README signal table)
# generation's feedback signals, chosen defaults on the same scale as MAX_ACCURACY_DROP: a ROUGE-L F-measure
# 0.10 lower than the reference's, and a bad-rating share 10 points above its baseline
MAX_ROUGE_DROP = 0.10
MAX_BAD_RATING_RISE = 0.10
# Bad-rating share assumed for a reference without ratings (generation references hold none unless re-baselined
# on rated feedback): a chosen default, 1 reply in 10 judged bad.
BASELINE_BAD_RATING_SHARE = 0.10
TOP_INTENTS = 5  # intents reported with their recall: README, "Drift policy" ("the recall of the 5 intents ...")
SEED = 0  # seed of the reference/window subsamples; any fixed value makes windows reproducible


class DriftConfig(BaseModel):
    """How the signals are computed (the decision thresholds live in ``policy.DriftPolicy``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    alpha: float = Field(DEFAULT_ALPHA, gt=0, lt=1, description="Per-signal significance level, already corrected: "
                         "0.05 / 6 signals (Bonferroni). Use DriftPolicy.drift_config() to keep both in step.")
    max_reference_rows: int = Field(MAX_REFERENCE_ROWS, ge=MIN_ROWS, description="Reference cap (seeded subsample) for the "
                                    "drift tests: bounds cost and power. Reference accuracy uses all labelled rows.")
    max_current_rows: int = Field(MAX_CURRENT_ROWS, ge=MIN_ROWS, description="Window cap (seeded subsample) for the drift tests, "
                                  "so large windows do not make every tiny difference significant, and for the "
                                  "embedding pass, ~3/4 of a cycle's cost (~1.5 s per 500 texts on 2 quiet cores). "
                                  "Accuracy and its estimates use all rows.")
    text_method: Literal["abs_text_content_drift", "perc_text_content_drift"] = Field(
        "abs_text_content_drift", description="Evidently text drift method: AUC vs a cutoff, or AUC vs a bootstrap "
        "percentile of 1000 random-classifier AUCs (same test, but the bootstrap is ~95 % of its cost: 1.5 s).")
    text_auc_threshold: float | None = Field(None, gt=0.5, lt=1, description="AUC cutoff for abs_text_content_drift. "
        "None: the (1 - alpha) quantile of the AUC's Mann-Whitney null for the actual sample sizes. Evidently's "
        "fixed 0.55 false-alarms on 100-200 row windows.")
    embedding_method: Literal["distance", "mmd", "model"] = Field(
        "model", description="Evidently embedding drift method. benchmarks/drift_embedding_methods.py measured all "
        "three on the champion's embeddings (100-row windows, level 0.05/6): the domain classifier ('model') "
        "fired least without drift (2.0 % vs 3.3 %), as often on the scarce-intent and label-mix shifts "
        "(0.97-1.0), 3-4x as often on 30 % typos (0.38 vs 0.10/0.12), at 0.04 s per test.")
    embedding_permutations: int = Field(PERMUTATIONS, ge=MIN_PERMUTATIONS, description="Null draws of the embedding permutation test.")
    label_permutations: int = Field(PERMUTATIONS, ge=MIN_PERMUTATIONS, description="Null draws of the label test (p resolution 1/(n+1)).")
    min_labels: int = Field(MIN_LABELS, ge=1, description="Labelled rows needed before accuracy_drop may fire.")
    max_accuracy_drop: float = Field(MAX_ACCURACY_DROP, ge=0, le=1, description="Absolute accuracy drop that matters.")
    max_rouge_drop: float = Field(MAX_ROUGE_DROP, ge=0, le=1, description="generation: drop of the mean ROUGE-L "
                                  "(replies vs reviewers' corrected replies) below the reference's that matters.")
    max_bad_rating_rise: float = Field(MAX_BAD_RATING_RISE, ge=0, le=1, description="generation: rise of the share "
                                       "of bad ratings above the baseline that matters.")
    baseline_bad_rating_share: float = Field(BASELINE_BAD_RATING_SHARE, ge=0, lt=1, description="generation: the "
                                             "bad-rating share of a reference without ratings (binomial test "
                                             "against it); a reference with ratings gives its own.")
    top_intents: int = Field(TOP_INTENTS, ge=0, description="Intents reported with their recall (largest share moves).")
    estimator: Literal["atc", "cbpe"] = Field("atc", description="Which label-free accuracy estimate is "
                                              "``estimated_accuracy`` (both are computed; see monitoring/performance.py).")
    seed: int = Field(SEED, description="Seed of the reference/window subsamples (the permutation nulls use seed 0).")


class SignalResult(BaseModel):
    """One signal of one window. ``fired`` applies the DriftConfig's level; the policy re-judges ``p_value``."""

    name: str
    method: str
    value: float | None = Field(description="Score: ROC AUC (text), min corrected p-value (descriptors, reply "
                                "descriptors), distance or AUC or MMD^2 (embedding), p-value (label, confidence), "
                                "drop (accuracy, ROUGE-L), rise (bad-rating share).")
    threshold: float = Field(description="Cutoff on ``value`` at the config's alpha.")
    fired: bool
    p_value: float | None = None
    evidently_fired: bool | None = Field(None, description="Evidently's own test verdict, where it ran one.")
    details: dict[str, Any] = Field(default_factory=dict, description="Sub-results (per descriptor, JS distance...).")


class WindowReport(BaseModel):
    """Signals and performance figures of one window, plus the Evidently snapshot (not serialised)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    signals: list[SignalResult]
    n_current: int
    n_reference: int
    n_labels: int
    accuracy: float | None
    macro_f1: float | None
    reference_accuracy: float | None
    accuracy_ci: tuple[float, float] | None = Field(None, description="Wilson 95 % interval of ``accuracy``.")
    estimated_accuracy: float | None = Field(None, description="Label-free estimate (DriftConfig.estimator).")
    estimated_accuracy_sd: float | None = Field(None, description="Sampling sd of a realised accuracy around it.")
    reference_estimated_accuracy: float | None = Field(None, description="The same estimate on the reference.")
    estimates: dict[str, float] = Field(default_factory=dict, description="Every estimator's value: atc, cbpe.")
    intents: list[dict] = Field(default_factory=list, description="Intents whose labelled share moved most, recall.")
    figures: dict[str, dict[str, float | None]] = Field(default_factory=dict, description="Task figures that are "
                                                        "not tests, by name then sample (reference|current); "
                                                        "generation: rouge_l, bad_rating_share, stop_rate, "
                                                        "mean_logprob, reply_length.")
    computed_at: float = Field(description="Unix seconds when the signals were computed.")
    seconds: float = Field(description="Wall time of compute_signals.")
    snapshot: Any = Field(None, exclude=True, repr=False)
    current_positions: Any = Field(None, exclude=True, repr=False, description="Rows of the window the tests used.")
    current_embeddings: Any = Field(None, exclude=True, repr=False, description="Their embeddings (n, d).")
    reference_embeddings: Any = Field(None, exclude=True, repr=False, description="The reference rows' (n, d).")

    def signal(self, name: str) -> SignalResult:
        """The signal called ``name``. Raises KeyError if absent."""
        for s in self.signals:
            if s.name == name:
                return s
        raise KeyError(name)
