#!/usr/bin/env bash
# Installs every framework validator into the active virtual environment (CI step 2, `pytest -m validators`):
# the `validators` extra (DeepSpeed, Accelerate, torchtitan, torchao, ShellCheck), what pip cannot install
# from an extra (megatron-core's cp312-only wheel and verl's, unpacked into .validators/; vLLM and SGLang
# without their CUDA dependencies, then what they import), and sbatch from Debian's slurm-client.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

pip install -e '.[test,validators]'

# megatron-core 0.17+ ships megatron/training/arguments.py but requires Python 3.12; argument parsing needs
# none of its compiled parts, so the wheel is unpacked and imported from .validators/megatron (tests/validators/shims.py).
if [[ ! -f .validators/megatron/megatron/training/arguments.py ]]; then
  pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
    --dest .validators/wheels megatron-core==0.19.2
  python -m zipfile -e .validators/wheels/megatron_core-0.19.2-*.whl .validators/megatron
fi

# verl 0.9.1 pins transformers < 5.11 and its wheel also installs top-level `tests` and `scripts` packages
# (which would shadow this repository's tests): it is unpacked into .validators/verl (tests/validators/shims.py
# puts it last on sys.path) and what composing and validating its config imports is installed beside it.
if [[ ! -f .validators/verl/verl/utils/config.py ]]; then
  pip download --no-deps --dest .validators/wheels verl==0.9.1
  python -m zipfile -e .validators/wheels/verl-0.9.1-py3-none-any.whl .validators/verl
fi
pip install hydra-core codetiming pillow "ray>=2.41.0" "tensordict>=0.8.0,<=0.10.0,!=0.9.0"

pip install --no-deps vllm==0.33.0 sglang==0.5.23
pip install -r tests/validators/serving-requirements.txt

if ! command -v sbatch >/dev/null; then
  SUDO=()
  if (( EUID != 0 )); then SUDO=(sudo); fi
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends slurm-client
fi
sbatch --version 2>/dev/null || command -v sbatch
