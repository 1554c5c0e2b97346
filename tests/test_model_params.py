"""Parameter counts against references no one here wrote: the vendors' official figures, the released
checkpoints' element counts, and `transformers` building the same architecture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parallelplan.models import get_preset, list_presets, load_model

FIXTURES = Path(__file__).parent / "fixtures" / "hf_configs"

# Presets whose official statement is a checkpoint count or a headline figure. Every preset has one.
WITH_OFFICIAL = [name for name in list_presets() if get_preset(name).official is not None]


def headline_ok(ours: int, stated: int, unit: float) -> bool:
    """Within 0.5% of the stated figure, or inside what the figure can mean as written: rounded or
    truncated at its last digit ("3.3B" covers [3.25B, 3.4B); "37B" covers [36.5B, 38B))."""
    return abs(ours - stated) <= 0.005 * stated or stated - unit / 2 <= ours < stated + unit


def test_every_preset_has_a_source_and_says_why_when_it_has_no_official_figure():
    for name in list_presets():
        preset = get_preset(name)
        assert preset.source, name
        if preset.official is None:
            assert any("no official parameter count" in note.lower() for note in preset.notes), name


@pytest.mark.parametrize("name", WITH_OFFICIAL)
def test_total_params_match_the_official_figure(name):
    """The checkpoint's element count when one is recorded (exact, after the documented non-parameter
    tensors it also stores), else the stated headline within 0.5% or its stated precision."""
    official = get_preset(name).official
    spec = load_model(name)
    ours = spec.total_params - (spec.params.embedding if official.total_excludes_embedding else 0)
    if official.checkpoint_total_params is not None:
        assert ours == official.checkpoint_total_params - official.checkpoint_extra_elements
    else:
        assert headline_ok(ours, official.total_params, official.total_unit), (
            f"{name}: ours {ours:,} vs stated {official.stated}"
        )


@pytest.mark.parametrize("name", [n for n in WITH_OFFICIAL if get_preset(n).official.active_params])
def test_active_params_match_the_official_figure(name):
    official = get_preset(name).official
    spec = load_model(name)
    ours = spec.active_params - (spec.params.embedding if official.active_excludes_input_embedding else 0)
    assert headline_ok(ours, official.active_params, official.active_unit), (
        f"{name}: ours {ours:,} vs stated {official.stated}"
    )


def test_headline_tolerance_is_not_vacuous():
    assert not headline_ok(68_976_648_192, 70_000_000_000, 1e9)  # Llama 2 70B is not "70B" to 0.5B
    assert headline_ok(405_853_388_800, 405_000_000_000, 1e9)
    assert not headline_ok(2_661_150_208, 2_400_000_000, 1e8)  # V2-Lite active only without the embedding


def test_deepseek_v3_main_model_excludes_mtp():
    """DeepSeek-V3's 671B excludes the MTP module; the HF checkpoint's ~685B adds it and two stored
    copies of the shared embedding/head (README_WEIGHTS.md)."""
    spec = load_model("deepseek-v3")
    assert spec.params.mtp > 11e9
    with_copies = spec.params.total_with_mtp + spec.params.embedding + spec.params.lm_head
    assert 684e9 < with_copies < 686e9


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in list_presets() if get_preset(n).hf_config is not None])
def test_preset_param_count_equals_transformers(name):
    from reference import parameter_count

    assert load_model(name).total_params == parameter_count(get_preset(name).hf_config)


@pytest.mark.slow
@pytest.mark.parametrize("family,labels", [("llama", 1), ("qwen3_moe", 1), ("gemma2", 3)])
def test_a_classifier_checkpoint_counts_its_score_head(family, labels):
    """A reward model or critic checkpoint (``LlamaForSequenceClassification`` …, ``id2label`` of one entry)
    has a ``num_labels``-wide head in place of the LM head, untied even where the LM ties it (Gemma 2):
    its parameters equal what transformers builds for the class."""
    from reference import classifier_parameter_count

    arch = _fixture_config(family)["architectures"][0].replace("ForCausalLM", "ForSequenceClassification")
    config = _fixture_config(family) | {"architectures": [arch], "id2label": {str(i): f"LABEL_{i}" for i in range(labels)}}
    spec = load_model(config)
    assert spec.num_labels == labels and spec.head_width == labels and not spec.head_tied
    assert spec.total_params == classifier_parameter_count(config)
    assert load_model(_fixture_config(family)).with_value_head().params.lm_head == spec.hidden_size


def _fixture_config(family: str) -> dict:
    config = json.loads((FIXTURES / family / "config.json").read_text())
    if config.get("model_type") == "RefinedWeb":
        # transformers reads this legacy Falcon-40B form only through the repo's remote code; give it the
        # field names its FalconConfig uses (what the hub's current falcon-40b config.json says).
        config = {**config, "model_type": "falcon", "architectures": ["FalconForCausalLM"],
                  "new_decoder_architecture": True, "num_kv_heads": config["n_head_kv"],
                  "num_attention_heads": config["n_head"], "num_hidden_layers": config["n_layer"]}
    return config


FAMILIES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())


def test_a_real_config_ships_for_every_supported_family():
    from parallelplan.models.hf_config import FAMILIES as SUPPORTED

    sources = json.loads((FIXTURES / "SOURCES.json").read_text())
    assert set(FAMILIES) == set(SUPPORTED) == set(sources)
    for family, source in sources.items():
        assert source["repo"] and source["path"] and source["checkpoint"], family


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_real_config_param_count_equals_transformers(family):
    from reference import parameter_count

    spec = load_model(FIXTURES / family)
    assert spec.architecture == family
    assert spec.total_params == parameter_count(_fixture_config(family))
