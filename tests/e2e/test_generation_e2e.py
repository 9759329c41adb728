"""The generation task end to end with the real SmolLM2-135M-Instruct (slow): the packaged GGUF is
converted once to safetensors, fine-tuned with LoRA on a slice of the Bitext customer-support pairs,
scored beside its base, saved as the champion and served by a real ``bentoml serve``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

BITEXT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "bitext-customer-support"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2() -> Path:
    """The converted base (cached in $TUNELOOP_CACHE or ~/.cache/tuneloop after the first run)."""
    from tuneloop.training.base_llm import default_causal_base

    path = Path(default_causal_base())
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config and (path / "model.safetensors").is_file()
    return path


def test_smollm2_converted_base_stops_with_im_end(smollm2):
    from tuneloop.training.generator import Generator

    gen = Generator.load(smollm2, device="cpu")
    assert gen.tokenizer.eos_token == "<|im_end|>" and gen.tokenizer.eos_token_id == 2
    assert sum(p.numel() for p in gen.model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    reply = gen.generate(["What is 2+2?"], max_new_tokens=48)[0]
    assert reply.finish_reason == "stop" and "4" in reply.text


def test_fine_tune_smollm2_beats_its_base_and_is_served(smollm2, home):
    from tuneloop.state.registry import read_champion
    from tuneloop.training.config import TrainConfig
    from tuneloop.training.train import train

    if not BITEXT.is_dir():
        pytest.fail(f"{BITEXT} is missing: the slow tests need ../shared beside the repository")
    cfg = TrainConfig.for_preset("quick", task="generation", data=str(BITEXT), text_column="instruction",
                                 response_column="response", max_train_per_label=3, epochs=2, eval_rows=8,
                                 eval_max_new_tokens=112, perplexity_rows=32, progress=False)
    result = train(cfg, home)
    fine, base = result.test_metrics, result.extra["base_test_metrics"]
    print({k: (fine.get(k), base.get(k)) for k in ("perplexity", "rougeL", "stop_rate")}, f"{result.seconds:.0f} s")
    # one epoch on 2 pairs per intent already moves the replies towards the domain's
    assert fine["perplexity"] < 0.8 * base["perplexity"]
    assert fine["rougeL"] > base["rougeL"]
    assert fine["stop_rate"] >= 0.5
    assert read_champion(home).tag == result.tag
    # the champion served by a real `bentoml serve`: plain, streamed, and through the openai client
    import httpx
    import openai

    from tuneloop.serving.launch import running_server
    from tuneloop.state.traffic_store import TrafficLog

    prompt = "I want to cancel my order"
    with running_server(home, env={"TUNELOOP_POLL_SECONDS": "3600"}, ready_timeout=300) as server:
        plain = httpx.post(f"{server.url}/generate", json={"prompt": prompt, "max_new_tokens": 64}, timeout=120).json()
        assert plain["model_tag"] == result.tag and plain["completion_tokens"] <= 64 and plain["text"].strip()
        with httpx.stream("POST", f"{server.url}/generate", json={"prompt": prompt, "max_new_tokens": 64, "stream": True},
                          timeout=120) as resp:
            events = [line[len("data: "):] for line in resp.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        pieces = [json.loads(e)["text"] for e in events[:-2]]
        assert "".join(pieces) == plain["text"]  # greedy: the stream is the plain reply, piece by piece
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", timeout=120)
        chat = client.chat.completions.create(model="tuneloop", messages=[{"role": "user", "content": prompt}],
                                              max_tokens=64)
        assert chat.choices[0].message.content == plain["text"] and chat.model == result.tag
    window = TrafficLog(home.traffic_db_path).read_window()
    assert len(window) == 3 and set(window["reply"]) == {plain["text"]}
