"""The naive baseline of ``serve_bench.py``: the same model behind a plain FastAPI endpoint that
runs one forward pass per request (no batching, no logging, no metrics), served by uvicorn.

The endpoint is a plain ``def``, so FastAPI runs it on its thread pool: requests run their forward
passes concurrently, each with the same torch thread count as the service under test. Same JSON
answer shape as ``/classify``. Run: ``python benchmarks/serve_naive.py --model DIR --port 8123``.
"""

from __future__ import annotations

import argparse
import uuid

import numpy as np
from pydantic import BaseModel


class Body(BaseModel):
    """The ``/classify`` request body (module level: FastAPI resolves the annotation by name)."""

    texts: list[str]


def make_app(model_dir: str, threads: int):
    """A FastAPI app with ``POST /classify`` and ``GET /readyz`` over the model in ``model_dir``."""
    import torch
    from fastapi import FastAPI

    from tuneloop.training.predict import Classifier

    torch.set_num_threads(threads)
    clf = Classifier.load(model_dir, device="cpu")
    app = FastAPI()

    @app.get("/readyz")
    def readyz() -> str:
        return "ok"

    @app.post("/classify")
    def classify(body: Body) -> list[dict]:
        answers = []
        for text in body.texts:
            proba = clf.predict_proba([text])[0]  # one forward pass
            top = np.argsort(-proba)[:3]
            answers.append({"request_id": uuid.uuid4().hex, "label": clf.labels[top[0]],
                            "confidence": float(proba[top[0]]), "model_tag": "naive",
                            "top3": [{"label": clf.labels[i], "probability": float(proba[i])} for i in top]})
        return answers

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="model folder (safetensors + tokenizer)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    uvicorn.run(make_app(args.model, args.threads), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
