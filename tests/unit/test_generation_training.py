"""The generation task's training side with a tiny random Llama: data capping, the Generator's
batched generation (budgets, stop strings, streaming, end of sequence), reply metrics, and a
fine-tune that must teach the model to stop, saved as a model version with its evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

REPLIES = {
    "cancel_order": "I can help you cancel order {{Order Number}}. Go to your account. Then press cancel.",
    "track_refund": "Your refund is on its way. Check the refund page. It takes five days.",
    "newsletter": "You can subscribe on {{Website Name}}. Enter your email. Press sign up.",
}


def write_pairs(folder: Path, per_intent: int = 12) -> Path:
    """train.csv / test.csv of request -> reply pairs in Bitext's columns (every 4th row is test)."""
    rows = [{"instruction": f"{intent.replace('_', ' ')} request number {i} please", "response": reply,
             "intent": intent, "category": intent.split("_")[0].upper()}
            for intent, reply in REPLIES.items() for i in range(per_intent)]
    df = pd.DataFrame(rows)
    folder.mkdir(parents=True, exist_ok=True)
    df.iloc[::4].to_csv(folder / "test.csv", index=False)
    df.drop(df.index[::4]).to_csv(folder / "train.csv", index=False)
    return folder


def gen_config(data: Path, base: Path, **overrides):
    from tuneloop.training.config import TrainConfig

    values = dict(task="generation", data=str(data), text_column="instruction", base_model=str(base),
                  max_train_per_label=1000, progress=False)
    values.update(overrides)
    return TrainConfig.for_preset("quick", **values)


def test_cap_reply_cuts_at_the_last_sentence_end_within_the_budget():
    from tuneloop.training.gen_data import cap_reply

    words = len  # one "token" per character keeps the arithmetic visible

    reply = "First sentence. Second one here. Third."
    assert cap_reply(reply, words, 100) == reply
    assert cap_reply(reply, words, 33) == "First sentence. Second one here."
    assert cap_reply(reply, words, 20) == "First sentence."
    assert cap_reply("one two three four five six", words, 12) in ("one two", "one two three")
    # a list item's number is not a sentence end: the reply never ends on a dangling "4."
    steps = "Do this:\n1. Open it.\n2. Click it. 3. Done now."
    assert cap_reply(steps, words, 40) == "Do this:\n1. Open it.\n2. Click it."


def test_generation_splits_cap_replies_and_keep_groups(tmp_path, tiny_llm):
    from tuneloop.training.gen_data import load_generation_splits

    cfg = gen_config(write_pairs(tmp_path / "data"), tiny_llm, max_reply_tokens=12)
    splits = load_generation_splits(cfg)
    assert list(splits.train.columns) == ["text", "reply", "label"]
    assert splits.labels == sorted(REPLIES)
    assert len(splits.test) == 9 and len(splits.train) + len(splits.validation) == 27
    # every reply (> 12 WordPiece tokens) is cut after a sentence that ends within 12 tokens; the cancel
    # reply's first sentence alone is longer ("{{" is two tokens), so it keeps the leading words that fit
    assert set(splits.test["reply"]) == {"Your refund is on its way.", "You can subscribe on {{Website Name}}.",
                                         "I can help you cancel order"}
    assert all(len(r) < len(REPLIES[label]) for r, label in zip(splits.test["reply"], splits.test["label"]))
    assert splits.report.augmented_rows["replies_capped_test"] == 9
    # the whole replies stay beside the capped ones outside train: the drift reference scores live replies
    # against them, because a reviewer's live correction is a whole reply too
    assert list(splits.test["reply_full"]) == [REPLIES[label] for label in splits.test["label"]]
    from tuneloop.training.gen_artifacts import generation_reference

    samples = splits.test.head(3).assign(fine_tuned_reply="x", finish_reason="stop", completion_tokens=1, mean_logprob=-1.0)
    reference = generation_reference(samples, splits.test, size=5, seed=0)
    assert len(reference) == 5 and reference["true_reply"].tolist() == [REPLIES[label] for label in
                                                                         splits.test["label"].head(3)] + list(
        reference["true_reply"].tail(2))
    assert set(reference["true_reply"]) <= set(REPLIES.values())


def test_reply_metrics_on_known_pairs():
    from tuneloop.training.gen_metrics import placeholder_fidelity, reply_scores, rouge_l_each, stop_rate

    same = reply_scores(["your order {{Order Number}} is cancelled"], ["your order {{Order Number}} is cancelled"])
    assert same["rougeL"] == pytest.approx(1.0) and same["bleu"] == pytest.approx(100.0)
    assert same["placeholder_fidelity"] == 1.0 and same["length_ratio"] == 1.0
    assert rouge_l_each(["a b c d"], ["a b x y"]) == [pytest.approx(0.5)]
    assert placeholder_fidelity(["no slot"], ["call {{Phone}} or {{Email}}"]) == 0.0
    assert placeholder_fidelity(["x"], ["no slots"]) is None
    assert stop_rate(["stop", "length", "stop", "stop"]) == 0.75
    with pytest.raises(ValueError):
        reply_scores([], [])


def test_generator_budgets_stop_strings_and_streaming(tiny_llm):
    from tuneloop.training.generator import Generator, PromptTooLongError

    gen = Generator.load(tiny_llm, device="cpu")
    assert gen.tokenizer.eos_token == "<|im_end|>" and gen.tokenizer.padding_side == "left"
    pieces: dict[int, list[str]] = {0: [], 1: [], 2: []}
    out = gen.generate(["short", "a much longer prompt with many more words in it", "third"],
                       max_new_tokens=[3, 7, 5], on_text=lambda row, piece: pieces[row].append(piece))
    for row, (c, budget) in enumerate(zip(out, [3, 7, 5])):
        assert c.completion_tokens <= budget
        assert c.finish_reason in ("stop", "length")
        if c.finish_reason == "length":
            assert c.completion_tokens == budget
        assert "".join(pieces[row]) == c.text  # the streamed pieces are the reply
        assert c.mean_logprob <= 0 and len(c.token_times) == c.completion_tokens
    assert out[1].prompt_tokens > out[0].prompt_tokens
    # the same prompt alone gives the same greedy reply as inside a left-padded batch
    assert gen.generate(["third"], max_new_tokens=5)[0].text == out[2].text
    # a stop string ends the reply before it
    first = gen.generate(["third"], max_new_tokens=12)[0].text
    words = first.split()
    if len(words) >= 3:
        cut = gen.generate(["third"], max_new_tokens=12, stop=[[words[2]]])[0]
        assert cut.finish_reason == "stop" and words[2] not in cut.text
    gen.max_prompt_tokens = 5
    with pytest.raises(PromptTooLongError):
        gen.generate(["this prompt is certainly longer than five tokens"])


def test_eos_check_refuses_rows_whose_reply_lacks_the_end_token():
    from datasets import Dataset

    from tuneloop.training.gen_train import check_reply_ends_with_eos

    good = Dataset.from_list([{"input_ids": [5, 6, 7, 2], "labels": [-100, -100, 7, 2]}])
    check_reply_ends_with_eos(good, eos_id=2)
    bad = Dataset.from_list([{"input_ids": [5, 6, 7, 2], "labels": [-100, 6, 7, -100]}])
    with pytest.raises(ValueError, match="learn to stop"):
        check_reply_ends_with_eos(bad, eos_id=2)


def test_generation_config_rules():
    from pydantic import ValidationError

    from tuneloop.training.config import TrainConfig

    cfg = TrainConfig.for_preset("quick", task="generation", data="x")
    assert (cfg.method, cfg.max_reply_tokens, cfg.label_column, cfg.model_name) == ("lora", 96, "intent",
                                                                                     "tuneloop-generator")
    assert TrainConfig.for_preset("full", task="generation", data="x").max_train_per_label == 24
    with pytest.raises(ValidationError, match="head"):
        TrainConfig(task="generation", data="x", method="head")
    with pytest.raises(ValueError, match="preset"):
        TrainConfig.for_preset("all_layers", task="generation", data="x")


def test_fine_tuned_generator_learns_to_stop_and_is_saved_with_its_evaluation(tmp_path, tiny_llm, home):
    """The commonest SFT complaint is a model that never stops: after fine-tuning on short replies
    (each closed by <|im_end|> through the chat template) every greedy test reply must end on its own,
    well inside its budget, where the random base model ran to the budget."""
    from tuneloop.state.registry import REFERENCE_FILE, get_model, read_champion
    from tuneloop.training.task import get_task, task_of
    from tuneloop.training.train import train

    cfg = gen_config(write_pairs(tmp_path / "data"), tiny_llm, method="full", learning_rate=2e-2, epochs=25,
                     patience=25, batch_size=4, warmup_ratio=0.0, eval_rows=6, eval_max_new_tokens=60)
    result = train(cfg, home)
    fine, base = result.test_metrics, result.extra["base_test_metrics"]
    assert fine["stop_rate"] == 1.0 and base["stop_rate"] == 0.0
    assert fine["perplexity"] < 2.0 < 1000 < base["perplexity"]
    assert fine["rougeL"] > base["rougeL"] + 0.4
    assert result.promoted and read_champion(home).tag == result.tag
    stored = get_model(home, result.tag)
    meta = dict(stored.info.metadata)
    assert task_of(meta).name == "generation" and meta["eos_token"] == "<|im_end|>"
    assert meta["metrics"]["test"]["stop_rate"] == 1.0 and meta["metrics"]["base_test"]["stop_rate"] == 0.0
    folder = Path(stored.path)
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    samples = [json.loads(line) for line in (folder / "evaluation" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 and {"prompt", "reference", "base_reply", "fine_tuned_reply"} <= set(samples[0])
    reference = pd.read_json(folder / REFERENCE_FILE, lines=True)
    assert reference["reply"].notna().sum() == 6 and len(reference) == 6 + 3 + 9 - 6  # scored + other prompts
    assert "fine-tuned | base" in (folder / "MODEL_CARD.md").read_text()
    # the stored folder loads as the task's predictor and replies as the evaluation did
    gen = get_task("generation").load_predictor(folder, device="cpu")
    again = gen.generate([samples[0]["prompt"]], max_new_tokens=60)[0]
    assert again.text == samples[0]["fine_tuned_reply"] and again.finish_reason == "stop"
