"""`load_model` on every kind of reference, and on bad input: each error names the problem."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from parallelplan.models import ModelError, ModelSpec, load_model

FIXTURES = Path(__file__).parent / "fixtures" / "hf_configs"
LLAMA = json.loads((FIXTURES / "llama" / "config.json").read_text())


def test_preset_names_and_aliases_are_case_insensitive():
    a = load_model("llama-3.1-70b")
    assert load_model("LLaMA-3.1-70B") == a
    assert load_model("meta-llama/Llama-3.1-70B") == a
    assert load_model("meta-llama/Meta-Llama-3.1-70B") == a
    assert a.name == "llama-3.1-70b" and a.source


def test_every_preset_the_original_advisor_offered_exists():
    names = ["llama-7b", "llama-13b", "llama-70b", "llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b",
             "mixtral-8x7b", "mixtral-8x22b", "deepseek-v2", "deepseek-v3", "deepseek-r1", "qwen-72b",
             "gpt-4-estimated"]
    for name in names:
        assert load_model(name).total_params > 0
    gpt4 = load_model("gpt-4-estimated")
    assert gpt4.is_estimate and "ESTIMATE" in gpt4.display_name


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ModelError, match="did you mean llama-3.1-70b"):
        load_model("lama-3.1-70b")
    with pytest.raises(ModelError, match="plan presets"):
        load_model("zzzz")


def test_config_file_folder_and_dict_agree():
    from_file = load_model(FIXTURES / "llama" / "config.json")
    from_folder = load_model(str(FIXTURES / "llama"))
    from_dict = load_model(LLAMA)
    assert from_file.total_params == from_folder.total_params == from_dict.total_params == 8_030_261_248
    assert from_file.architecture == "llama"


def test_modelspec_dict_and_yaml_file(tmp_path):
    fields = {"name": "tiny", "hidden_size": 256, "num_layers": 4, "num_attention_heads": 8, "num_kv_heads": 2,
              "ffn_hidden_size": 512, "vocab_size": 1000}
    spec = load_model(fields)
    assert isinstance(spec, ModelSpec) and spec.head_dim == 32 and spec.attention_kind == "gqa"
    path = tmp_path / "tiny.yaml"
    path.write_text("\n".join(f"{k}: {v}" for k, v in fields.items()))
    assert load_model(path) == spec


def test_moe_layer_shorthand_expands_to_dense_layers():
    spec = load_model({"name": "m", "hidden_size": 64, "num_layers": 6, "num_attention_heads": 4,
                       "ffn_hidden_size": 128, "vocab_size": 100,
                       "moe": {"num_experts": 8, "experts_per_token": 2, "expert_ffn_hidden_size": 32,
                               "first_k_dense_layers": 1, "moe_layer_frequency": 2}})
    assert spec.moe.dense_layers == (0, 1, 3, 5)
    assert spec.num_moe_layers == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_size": None}, "missing field.*'hidden_size'"),
        ({"vocab_size": None, "intermediate_size": None}, "missing field.*'intermediate_size'.*'vocab_size'"),
        ({"num_attention_heads": "32"}, "'num_attention_heads' = '32': expected an integer"),
        ({"hidden_size": -4096}, "'hidden_size' = -4096: must be between 1 and"),
        ({"hidden_size": 10**200}, "'hidden_size' = 1000.*: must be between 1 and"),
        ({"model_type": ["llama"]}, "'model_type' = \\['llama'\\]: expected a string"),
        ({"hidden_act": ["silu"]}, "'hidden_act' = \\['silu'\\]: supported activations"),
        ({"num_key_value_heads": 0}, "'num_key_value_heads' = 0"),
        ({"num_key_value_heads": 5}, "multiple of num_kv_heads"),
        ({"hidden_act": "swoosh"}, "'hidden_act' = 'swoosh': supported activations"),
        ({"tie_word_embeddings": "no"}, "'tie_word_embeddings' = 'no': expected true or false"),
    ],
)
def test_bad_hf_fields_are_named(change, message):
    config = {k: v for k, v in {**LLAMA, **change}.items() if v is not None}
    with pytest.raises(ModelError, match=message):
        load_model(config)


@pytest.mark.parametrize("family", ["gemma2", "gpt_oss", "qwen2"])
def test_bad_layer_count_in_a_windowed_family_is_named(family):
    config = json.loads((FIXTURES / family / "config.json").read_text())
    config.update(num_hidden_layers="4", use_sliding_window=True)
    with pytest.raises(ModelError, match="'num_hidden_layers' = '4': expected an integer"):
        load_model(config)
    config.update(num_hidden_layers=4, layer_types=["sliding_attention"] * 3)
    with pytest.raises(ModelError, match="'layer_types' must list one attention type per layer"):
        load_model(config)


def test_unknown_architecture_lists_supported_and_missing_fields():
    with pytest.raises(ModelError) as err:
        load_model({"model_type": "mamba", "hidden_size": 768, "num_hidden_layers": 24, "vocab_size": 50280})
    text = str(err.value)
    assert "model_type 'mamba'" in text and "llama" in text and "deepseek_v3" in text
    assert "num_attention_heads" in text and "intermediate_size" in text


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"hidden_size": 0}, "'hidden_size' = 0: Input should be greater than or equal to 1"),
        ({"hidden_size": "64"}, "'hidden_size' = '64': Input should be a valid integer"),
        ({"num_layers": True}, "'num_layers' = True: Input should be a valid integer"),
        ({"moe": {"num_experts": 4, "experts_per_token": 2, "expert_ffn_hidden_size": 8, "first_k_dense_layers": -1}},
         "first_k_dense_layers .int >= 0."),
        ({"moe": {"num_experts": 4, "experts_per_token": 2, "expert_ffn_hidden_size": 8, "first_k_dense_layers": 1,
                  "dense_layers": [0]}}, "not both"),
        ({"num_layers": "many"}, "num_layers.*'many'"),
        ({"moe": {"num_experts": 4, "experts_per_token": 8, "expert_ffn_hidden_size": 8}}, "experts_per_token"),
        ({"colour": "blue"}, "'colour' is not a known field"),
        ({"hidden_size": 100, "num_attention_heads": 3}, "set head_dim explicitly"),
    ],
)
def test_bad_modelspec_fields_are_named(fields, message):
    base = {"name": "x", "hidden_size": 64, "num_layers": 2, "num_attention_heads": 4, "ffn_hidden_size": 128,
            "vocab_size": 100}
    with pytest.raises(ModelError, match=message):
        load_model({**base, **fields})


def test_bad_files(tmp_path):
    broken = tmp_path / "config.json"
    broken.write_text('{"model_type": "llama", "hidden_size": 4096,,}')
    with pytest.raises(ModelError, match=r"not valid JSON \(line 1"):
        load_model(broken)
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2]")
    with pytest.raises(ModelError, match="expected a mapping of model fields, got list"):
        load_model(listing)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ModelError, match="cannot read it"):
        load_model(binary)
    with pytest.raises(ModelError, match="not a usable path"):
        load_model("a" * 300)
    with pytest.raises(ModelError, match="no such user's home directory"):  # ~user of an unknown user
        load_model("~no-such-user-here/config.json")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("name: x\nhidden_size: [4096\n")
    with pytest.raises(ModelError, match=r"not valid YAML \(line \d+, column \d+: ") as err:
        load_model(bad_yaml)
    assert "\n" not in str(err.value)
    with pytest.raises(ModelError, match="no such file"):
        load_model(tmp_path / "missing.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="holds no config.json"):
        load_model(empty)
    with pytest.raises(ModelError, match="must be a preset name"):
        load_model(42)
    with pytest.raises(ModelError, match="nor a valid Hugging Face repo id"):
        load_model("org/na..me")


def test_a_folder_named_like_a_preset_is_reported(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "llama-7b").mkdir()
    with pytest.raises(ModelError, match="holds no config.json.*a preset of that name exists"):
        load_model("llama-7b")


def _plan(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "parallelplan", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def _seed_hub_cache(cache: Path, repo_id: str, config: dict) -> None:
    """The huggingface_hub cache layout: models--org--name/{refs/main, snapshots/<commit>/config.json}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(config))


def test_hub_repo_from_the_local_cache_offline(tmp_path):
    _seed_hub_cache(tmp_path, "someorg/tiny-llama", {**LLAMA, "num_hidden_layers": 2})
    done = _plan("analyze", "--model", "someorg/tiny-llama", "--json",
                 env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["model"]["num_layers"] == 2


def test_hub_offline_without_cache_says_how_to_pass_a_file(tmp_path):
    done = _plan("analyze", "--model", "someorg/not-cached", env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path)})
    assert done.returncode == 2
    assert "HF_HUB_OFFLINE is set" in done.stderr and "--model ./config.json" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_hub_unreachable_says_so(tmp_path):
    """A closed local port stands in for an unreachable hub (huggingface_hub retries ~20 s first)."""
    done = _plan("analyze", "--model", "someorg/unreachable",
                 env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "0"})
    assert done.returncode == 2
    assert "cannot be reached" in done.stderr and "--model ./config.json" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_config_given_inline_as_json_text_loads_like_the_file():
    """The page's pasted config.json (and ``--model '{...}'``): the same spec as the file's."""
    path = Path(__file__).parent / "fixtures" / "hf_configs" / "gemma2" / "config.json"
    assert load_model(path.read_text()) == load_model(str(path))
    assert load_model(json.dumps(json.loads(path.read_text()))) == load_model(str(path))
    with pytest.raises(ModelError, match="not valid JSON"):
        load_model('{"model_type": ')
