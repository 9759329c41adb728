"""The saved causal language model, loaded for inference: batched, streamed, stoppable generation
and the perplexity of given replies.

A model folder holds ``config.json``, ``model.safetensors`` (a pickled ``pytorch_model.bin`` is
refused) and the tokenizer files with a chat template. Prompts go through that chat template (the
same one the model was fine-tuned with: a template mismatch between training and inference is one
of the commonest SFT bugs, trl #1623), with the assistant turn opened.

Batches are left-padded (every row's next token is at the last position) and one
:class:`RowTracker`, passed to ``generate`` as its last logits processor and as a stopping criterion, follows
each row: it decodes the row's new tokens incrementally, calls ``on_text`` with each new piece (the
service's streaming), ends a row at the end-of-sequence token, at one of its stop strings or at its
own ``max_new_tokens``, and records the log-probability of each chosen token (the model's
confidence in its reply). ``generate`` stops when every row has ended.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Prompt = str | Sequence[dict]  # a user message, or chat messages [{"role": ..., "content": ...}, ...]
DEFAULT_MAX_PROMPT_TOKENS = 1024


class PromptTooLongError(ValueError):
    """A prompt has more tokens than the model accepts (``tokens`` and ``limit`` say how many)."""

    def __init__(self, tokens: int, limit: int) -> None:
        super().__init__(f"the prompt has {tokens} tokens after the chat template; the limit is {limit}")
        self.tokens, self.limit = tokens, limit


@dataclass
class Completion:
    """One generated reply.

    Attributes:
        text: the reply (no end-of-sequence token; cut before a stop string).
        finish_reason: ``"stop"`` (end-of-sequence token or a stop string) or ``"length"`` (its
            ``max_new_tokens`` ran out), the OpenAI API's finish reasons.
        prompt_tokens: tokens of the prompt after the chat template.
        completion_tokens: tokens generated for this reply (the end-of-sequence token included).
        mean_logprob: mean natural-log probability of the generated tokens under the sampling
            distribution (<= 0; 0 when no token was generated).
        first_token_s: seconds from the start of the batch to this row's first token.
        token_times: ``time.perf_counter()`` of each generated token.
    """

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    mean_logprob: float
    first_token_s: float | None = None
    token_times: list[float] = field(default_factory=list)


class RowTracker:
    """Follows every row of one batched ``generate`` call (see the module docstring).

    ``transformers`` calls it once per step as the last logits processor (it keeps the step's
    log-probabilities) and, once the step's tokens are appended, as a stopping criterion: it reads
    each row's new token, and returns True for the rows that ended (``generate`` pads those from
    then on and stops when all have ended). Both hooks are public ``generate`` arguments; the
    adapters that subclass transformers' classes are made on first use (:func:`_hooks`), so importing
    this module (the service does, at start) does not import transformers.
    """

    def __init__(self, tokenizer: Any, max_new_tokens: list[int], stops: list[list[str]],
                 on_text: Callable[[int, str], None] | None) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = _eos_ids(tokenizer)
        self.max_new = max_new_tokens
        self.stops = stops
        self.on_text = on_text
        n = len(max_new_tokens)
        self.ids: list[list[int]] = [[] for _ in range(n)]
        self.text = [""] * n
        self.logprobs: list[list[float]] = [[] for _ in range(n)]
        self.times: list[list[float]] = [[] for _ in range(n)]
        self.finish: list[str | None] = [None] * n
        self._step_logp = None  # (batch, vocab) log-probabilities of the step being decided
        self.started = time.perf_counter()

    def process(self, input_ids, scores):
        """As a logits processor: remember the step's log-probabilities, change nothing."""
        import torch

        self._step_logp = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def after_step(self, input_ids):
        """As a stopping criterion: take each row's new token; True for the rows that ended."""
        import torch

        now = time.perf_counter()
        tokens = input_ids[:, -1].tolist()
        logp = (self._step_logp.gather(1, input_ids[:, -1:]).squeeze(1).tolist()
                if self._step_logp is not None else [0.0] * len(tokens))
        self._step_logp = None
        for row, token in enumerate(tokens):
            if self.finish[row] is not None:
                continue
            self.ids[row].append(token)
            self.times[row].append(now)
            self.logprobs[row].append(float(logp[row]))
            if token in self.eos_ids:
                self.finish[row] = "stop"
                continue
            text = self.tokenizer.decode(self.ids[row], skip_special_tokens=True)
            cut = _first_stop(text, self.stops[row])
            if cut is not None:
                text, self.finish[row] = text[:cut], "stop"
            elif len(self.ids[row]) >= self.max_new[row]:
                self.finish[row] = "length"
            # a piece ending in U+FFFD is an incomplete multi-byte character: wait for the rest
            if len(text) > len(self.text[row]) and (self.finish[row] or not text.endswith("\ufffd")):
                piece, self.text[row] = text[len(self.text[row]):], text
                if self.on_text is not None:
                    self.on_text(row, piece)
            elif cut is not None:  # the stop string began in pieces already sent: the reply ends before it
                self.text[row] = text
        return torch.tensor([reason is not None for reason in self.finish], device=input_ids.device)


@functools.cache
def _hooks():
    """(logits processor, stopping criterion) adapter classes around a :class:`RowTracker`."""
    from transformers import LogitsProcessor, StoppingCriteria

    class TrackerProcessor(LogitsProcessor):
        def __init__(self, tracker: RowTracker) -> None:
            self.tracker = tracker

        def __call__(self, input_ids, scores):  # no **kwargs: LogitsProcessorList would then demand them
            return self.tracker.process(input_ids, scores)

    class TrackerStop(StoppingCriteria):
        def __init__(self, tracker: RowTracker) -> None:
            self.tracker = tracker

        def __call__(self, input_ids, scores, **kwargs):
            return self.tracker.after_step(input_ids)

    return TrackerProcessor, TrackerStop


def _eos_ids(tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    return {i for i in ids if i is not None}


def _first_stop(text: str, stops: list[str]) -> int | None:
    cuts = [text.find(s) for s in stops if s and s in text]
    return min(cuts) if cuts else None


@dataclass
class Generator:
    """A loaded causal language model with its tokenizer.

    Attributes:
        tokenizer: a fast tokenizer with a chat template and an end-of-sequence token.
        model: an ``AutoModelForCausalLM`` in eval mode on ``device``.
        device: ``"cpu"`` or ``"cuda"``.
        max_prompt_tokens: longest prompt accepted (after the chat template).
    """

    tokenizer: Any
    model: Any
    device: str = "cpu"
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS

    @classmethod
    def load(cls, path: Path | str, device: str | None = None, precision: str | None = None) -> Generator:
        """Load a model folder (bf16 on CUDA, or with ``precision="bf16"``; fp32 otherwise).

        Raises:
            FileNotFoundError: the folder has no ``model.safetensors`` (pickled weights are refused).
            ValueError: the tokenizer has no chat template or no end-of-sequence token, or
                ``precision`` is neither None, ``"none"`` nor ``"bf16"``.
        """
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from tuneloop.training.predict import pick_device

        if precision not in (None, "none", "bf16"):
            raise ValueError(f"precision {precision!r}: a generator loads in fp32 or bf16 (int8 is for classifiers)")
        path = Path(path)
        if not any(path.glob("model*.safetensors")):
            raise FileNotFoundError(f"{path}: no model.safetensors (weights load only from safetensors)")
        device = device or pick_device()
        dtype = torch.bfloat16 if (device == "cuda" or precision == "bf16") else torch.float32
        tokenizer = AutoTokenizer.from_pretrained(path)
        if not tokenizer.chat_template or tokenizer.eos_token_id is None:
            raise ValueError(f"{path}: the tokenizer needs a chat template and an end-of-sequence token")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True).to(device).eval()
        return cls(tokenizer=prepare_tokenizer(tokenizer), model=model, device=device)

    def render(self, prompt: Prompt) -> str:
        """The prompt through the chat template, the assistant turn opened (a str is one user message)."""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def prompt_tokens(self, prompt: Prompt) -> int:
        """Tokens of ``prompt`` after the chat template."""
        return len(self.tokenizer(self.render(prompt), add_special_tokens=False)["input_ids"])

    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int | Sequence[int] = 128,
                 temperature: float = 0.0, top_p: float = 1.0, stop: Sequence[Sequence[str]] | None = None,
                 on_text: Callable[[int, str], None] | None = None, seed: int | None = None) -> list[Completion]:
        """Replies to ``prompts`` in one left-padded batch.

        Args:
            prompts: n prompts (str or chat messages).
            max_new_tokens: one budget for all rows, or one per row.
            temperature: 0 is greedy decoding; > 0 samples (with ``top_p`` nucleus filtering).
            stop: per row, strings that end its reply (cut before them); None: none.
            on_text: called as ``on_text(row, piece)`` with every new piece of a row's reply, on
                the calling thread, as soon as it is decoded.
            seed: seeds sampling (``torch.manual_seed``) when given.

        Returns:
            n :class:`Completion`, in order.

        Raises:
            PromptTooLongError: a prompt exceeds :attr:`max_prompt_tokens`.
            ValueError: no prompts, or a budget below 1.
        """
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        n = len(prompts)
        if n == 0:
            raise ValueError("generate needs at least one prompt")
        budgets = [int(max_new_tokens)] * n if isinstance(max_new_tokens, int) else [int(b) for b in max_new_tokens]
        if len(budgets) != n or min(budgets) < 1:
            raise ValueError("max_new_tokens must be >= 1, one value or one per prompt")
        stops = [list(s) for s in stop] if stop is not None else [[] for _ in range(n)]
        enc = self.tokenizer([self.render(p) for p in prompts], return_tensors="pt", padding=True,
                             add_special_tokens=False)
        lengths = enc["attention_mask"].sum(dim=1).tolist()
        if max(lengths) > self.max_prompt_tokens:
            raise PromptTooLongError(int(max(lengths)), self.max_prompt_tokens)
        tracker = RowTracker(self.tokenizer, budgets, stops, on_text)
        processor, stop_hook = _hooks()
        sampling = temperature > 0
        if seed is not None:
            torch.manual_seed(seed)
        kwargs = {"do_sample": sampling, "temperature": temperature if sampling else None,
                  "top_p": top_p if sampling else None, "top_k": None}
        with torch.inference_mode():
            self.model.generate(
                input_ids=enc["input_ids"].to(self.device), attention_mask=enc["attention_mask"].to(self.device),
                max_new_tokens=max(budgets),
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
                logits_processor=LogitsProcessorList([processor(tracker)]),
                stopping_criteria=StoppingCriteriaList([stop_hook(tracker)]), **kwargs,
            )
        return [
            Completion(text=tracker.text[i], finish_reason=tracker.finish[i] or "length", prompt_tokens=int(lengths[i]),
                       completion_tokens=len(tracker.ids[i]),
                       mean_logprob=(sum(tracker.logprobs[i]) / len(tracker.logprobs[i])) if tracker.logprobs[i] else 0.0,
                       first_token_s=(tracker.times[i][0] - tracker.started) if tracker.times[i] else None,
                       token_times=tracker.times[i])
            for i in range(n)
        ]

    def reply_nll(self, prompts: Sequence[Prompt], replies: Sequence[str], batch_size: int = 8) -> tuple[float, int]:
        """Teacher-forced negative log-likelihood of ``replies`` (each + the end-of-sequence
        token) after their prompts: ``(total nats, tokens scored)``; perplexity is
        ``exp(total / tokens)``. Prompt tokens are not scored.

        Raises:
            ValueError: ``prompts`` and ``replies`` differ in length, or are empty.
        """
        import torch

        if len(prompts) != len(replies) or not prompts:
            raise ValueError("reply_nll needs as many replies as prompts, at least one")
        rows = [self.encode_pair(p, r) for p, r in zip(prompts, replies)]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
        total, count = 0.0, 0
        pad = self.tokenizer.pad_token_id
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chunk = [rows[i] for i in order[start:start + batch_size]]
                width = max(len(ids) for ids, _ in chunk)
                ids = torch.tensor([r + [pad] * (width - len(r)) for r, _ in chunk], device=self.device)
                mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r, _ in chunk], device=self.device)
                labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in chunk], device=self.device)
                logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
                target = labels[:, 1:]
                nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                        ignore_index=-100, reduction="sum")
                total += float(nll)
                count += int((target != -100).sum())
        return total, count

    def perplexity(self, prompts: Sequence[Prompt], replies: Sequence[str], batch_size: int = 8) -> float:
        """``exp`` of the mean per-token negative log-likelihood of the replies (:meth:`reply_nll`)."""
        total, count = self.reply_nll(prompts, replies, batch_size)
        return math.exp(total / max(count, 1))

    def encode_pair(self, prompt: Prompt, reply: str) -> tuple[list[int], list[int]]:
        """Token ids of prompt (chat template) + reply + end-of-sequence, and labels (-100 on the prompt)."""
        prompt_ids = self.tokenizer(self.render(prompt), add_special_tokens=False)["input_ids"]
        reply_ids = self.tokenizer(reply, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        return prompt_ids + reply_ids, [-100] * len(prompt_ids) + reply_ids


def prepare_tokenizer(tokenizer):
    """Left padding (batched generation) and a pad token (the end-of-sequence one when missing)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
