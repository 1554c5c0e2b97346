"""`load_model(ref)`: a preset name or alias, a ``config.json`` (or a folder holding one), a HuggingFace
repo id, or a dict (HF ``config.json`` form or `ModelSpec` fields), or that dict's JSON text (a string
starting with ``{``: a config pasted into the page or given to ``--model``) → a validated `ModelSpec`.

Resolution order for a string: an existing path, then a preset name/alias (case-insensitive), then a
HF repo id (``org/name``). A repo's ``config.json`` already in the local Hugging Face cache (``HF_HOME``)
is used without a network call; otherwise ``huggingface_hub`` downloads it, honouring ``HF_HUB_OFFLINE``.
Nothing else here touches the network.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from parallelplan.common.files import existing_path, looks_like_path, read_mapping
from parallelplan.common.validation import describe_validation_error
from parallelplan.models.errors import ModelError
from parallelplan.models.hf_config import looks_like_hf_config, spec_fields_from_hf
from parallelplan.models.presets import get_preset, preset_names_and_aliases
from parallelplan.models.spec import ModelSpec

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def build_spec(fields: dict[str, Any], *, what: str) -> ModelSpec:
    """ModelSpec(**fields), with pydantic's errors turned into one ModelError naming every field."""
    try:
        return ModelSpec.model_validate(fields)
    except ValidationError as err:
        raise ModelError(describe_validation_error(err, what)) from None


def spec_from_dict(data: dict[str, Any], *, name: str | None = None, what: str = "model dict") -> ModelSpec:
    """A dict in HF ``config.json`` form (has ``model_type`` or ``architectures``) or in ModelSpec's form."""
    if looks_like_hf_config(data):
        label = name or data.get("_name_or_path") or data.get("model_type") or "hf-model"
        return build_spec(spec_fields_from_hf(data, name=str(label)), what=what)
    fields = dict(data)
    fields.setdefault("name", name or "custom-model")
    return build_spec(fields, what=what)


def _from_path(path: Path, *, shadows_preset: bool = False) -> ModelSpec:
    data, name = _read_path(path, shadows_preset=shadows_preset)
    return spec_from_dict(data, name=name, what=str(path))


def _read_path(path: Path, *, shadows_preset: bool = False) -> tuple[dict[str, Any], str]:
    """The mapping a model file (or a folder's config.json) holds, and the model's name."""
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            shadow = " (a preset of that name exists: run from another folder to use it)" if shadows_preset else ""
            raise ModelError(f"folder {path} holds no config.json; pass the config file itself or its folder{shadow}")
        path = config
    data = read_mapping(path, ModelError, "model fields")
    recorded = data.get("_name_or_path")  # HF configs record the checkpoint they came from
    if isinstance(recorded, str) and recorded:
        name = recorded
    else:
        name = path.parent.name if path.name == "config.json" else path.stem
    return data, name


def _from_hub(repo_id: str) -> ModelSpec:
    return spec_from_dict(_read_hub(repo_id), name=repo_id, what=f"{repo_id}/config.json")


def _read_hub(repo_id: str) -> dict[str, Any]:
    """A repo's config.json: from the local cache when it is there (no network call), else downloaded."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ModelError(f"{repo_id!r} is not a preset, a file, nor a valid Hugging Face repo id ({err})") from None

    local = "download its config.json and pass the file: plan analyze --model ./config.json"
    # LocalEntryNotFoundError subclasses EntryNotFoundError: it must be caught first.
    cached = try_to_load_from_cache(repo_id, "config.json")
    try:
        path = cached if isinstance(cached, str) else hf_hub_download(repo_id, "config.json")
    except GatedRepoError:
        raise ModelError(
            f"Hugging Face repo {repo_id!r} is gated: accept its license on huggingface.co and log in "
            f"(HF_TOKEN), or {local}"
        ) from None
    except RepositoryNotFoundError:
        raise ModelError(
            f"{repo_id!r} is not a preset (see `plan presets`) nor a Hugging Face repo this machine can see "
            "(no such repo, or it is private)"
        ) from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face Hub cannot be reached"
        raise ModelError(
            f"{why} and {repo_id}/config.json is not in the local cache ({_cache_dir()}); {local}"
        ) from None
    except EntryNotFoundError:
        raise ModelError(f"Hugging Face repo {repo_id!r} has no config.json at its root") from None
    except OSError as err:  # network errors that huggingface_hub lets through
        raise ModelError(f"could not reach the Hugging Face Hub for {repo_id!r} ({err}); {local}") from None
    return read_mapping(Path(path), ModelError, "model fields")


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def load_model(ref: str | os.PathLike[str] | dict[str, Any] | ModelSpec) -> ModelSpec:
    """Resolve ``ref`` to a ModelSpec (see the module docstring); raise ModelError with a fix otherwise."""
    if isinstance(ref, ModelSpec):
        return ref
    if isinstance(ref, dict):
        return spec_from_dict(ref)
    if isinstance(ref, str) and ref.lstrip().startswith("{"):  # a config.json's text, pasted
        return spec_from_dict(_json_object(ref))
    return _resolve(ref, _from_path, lambda preset: preset.to_spec(), _from_hub)


def _json_object(text: str) -> dict[str, Any]:
    """The JSON object of a model reference given inline (the page's pasted config.json, ``--model '{...}'``)."""
    try:
        data = json.loads(text)
    except ValueError as err:
        raise ModelError(f"the model given inline is not valid JSON ({err}); paste the whole config.json") from None
    if not isinstance(data, dict):
        raise ModelError("the model given inline must be a JSON object: a config.json or ModelSpec fields")
    return data


def load_hf_config(ref: str | os.PathLike[str] | dict[str, Any]) -> dict[str, Any]:
    """The HuggingFace ``config.json`` dict behind ``ref`` (a preset's ``hf_config``, a file or folder, a
    cached or downloadable repo id, or the dict itself), for building the `transformers` architecture
    (`dryrun`). A model known only in ModelSpec's own fields has none: ModelError says so."""
    if isinstance(ref, dict):
        data = ref
    else:
        data = _resolve(ref, lambda path, **kw: _read_path(path, **kw)[0], lambda preset: preset.hf_config or {},
                        _read_hub)
    if not looks_like_hf_config(data):
        raise ModelError(f"model {ref if isinstance(ref, str) else data.get('name', 'given')!r} has no HuggingFace "
                         "config.json form (no model_type), so no `transformers` class builds it; pass a config.json")
    return data


def _resolve(ref: str | os.PathLike[str], from_path, from_preset, from_hub):
    """Resolve a textual model reference: an existing path, then a preset, then a hub repo id."""
    if not isinstance(ref, (str, os.PathLike)):
        raise ModelError(
            f"model reference must be a preset name, a path, a Hugging Face repo id or a dict; got {type(ref).__name__}"
        )
    text = os.fspath(ref).strip()
    if not text:
        raise ModelError("model reference is empty; give a preset name (see `plan presets`), a path or a repo id")
    path = existing_path(text, ModelError)
    if path is not None:
        return from_path(path, shadows_preset=get_preset(text) is not None)
    preset = get_preset(text)
    if preset is not None:
        return from_preset(preset)
    if looks_like_path(text):
        raise ModelError(f"no such file or folder: {text}")
    if _REPO_ID.match(text):
        return from_hub(text)
    known = preset_names_and_aliases()
    matches = difflib.get_close_matches(text.lower(), list(known), n=8, cutoff=0.5)
    close = list(dict.fromkeys(known[m] for m in matches))[:5]
    hint = f"; did you mean {', '.join(close)}?" if close else "; `plan presets` lists them"
    raise ModelError(f"unknown model {text!r}: not a preset, a file, or an org/name repo id{hint}")
