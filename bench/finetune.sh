#!/usr/bin/env bash
# Fine-tuning benchmark on the CPU: `pipe`'s finetune stage side by side with
# the Python (transformers) reference, alternating, each REPEAT times; medians.
#
#   PIPE_REF_PYTHON=PY bench/finetune.sh [REPEAT] [MODELS]   (default 3, "minilm base")
#
# PIPE_REF_PYTHON: a python with torch 2.11, transformers, scikit-learn and
# pandas; the reference is bench/ref/train_ref.py (PIPE_REF_BENCH overrides
# its folder). Set PIPE_MIRROR to work offline. Two models:
#   all-MiniLM-L6-v2 on the CoLA train split (6413 rows, test_fraction 0.25,
#   split seed 42), batch 32, lr 1e-4, 10% warm-up + linear decay, 3 epochs:
#     pipe fp32, pipe bf16 (dynamic padding, length-grouped batches);
#     py-careful: the same recipe in transformers (dynamic padding);
#     py-blog: the blog's recipe (padding to 64, batch 64, lr 2e-5), first 40 steps
#   bert-base-sized (12 layers, hidden 768, random weights written here), the
#   blog's recipe (batch 64, lr 2e-5, max_len 64), 960 training rows:
#     pipe fp32, pipe bf16; py-base-dynamic and py-base-pad64 (15 steps of 64)
# MODELS picks them ("minilm", "base" or both).
# Every run prints samples/s, matrix-product GFLOP/s (of the tokens actually
# processed, padding included) against the cores' peak, and peak RSS.
set -euo pipefail
repeat=${1:-3}
models=${2:-minilm base}
export PIPE_REF_BENCH=${PIPE_REF_BENCH:-$(cd "$(dirname "$0")" && pwd)/ref}
. "$(dirname "$0")/common.sh"
bench_setup finetune <<'YAML'
  fp32:
    kind: finetune
    inputs: {model: "bert:", data: "split:"}
    with: {epochs: 3, batch_size: 32, lr: 1e-4, warmup_ratio: 0.1, schedule: linear, threads: 2, bf16: false}
  bf16:
    kind: finetune
    inputs: {model: "bert:", data: "split:"}
    with: {epochs: 3, batch_size: 32, lr: 1e-4, warmup_ratio: 0.1, schedule: linear, threads: 2, bf16: true}
  base_rows:
    kind: split
    inputs: {data: base.tsv}
    with: {format: tsv, header: false, text_column: 3, label_column: 1, test_fraction: 0.25, seed: 42}
  base_fp32:
    kind: finetune
    inputs: {model: base, data: "base_rows:"}
    with: {epochs: 1, batch_size: 64, lr: 2e-5, max_len: 64, threads: 2, bf16: false}
  base_bf16:
    kind: finetune
    inputs: {model: base, data: "base_rows:"}
    with: {epochs: 1, batch_size: 64, lr: 2e-5, max_len: 64, threads: 2, bf16: true}
YAML
# Placeholders, filled in below (a manifest's workspace inputs must exist).
touch base.tsv && mkdir -p base
"$pipe" -q run bench.yaml --until data
"$pipe" -q run bench.yaml --until cola
"$pipe" -q run bench.yaml --until split
"$pipe" -q run bench.yaml --until bert
model=$work/.pipe/out/bench/bert
# 1280 rows of CoLA's training file: 960 to train on, 320 to test.
head -1280 .pipe/out/bench/data/cola_public/raw/in_domain_train.tsv > base.tsv
"$py" - "$model" "$work/base" <<'PY'
import os, shutil, sys, torch
from transformers import BertConfig, BertForSequenceClassification
mini, base = sys.argv[1:]
torch.manual_seed(0)
BertForSequenceClassification(BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
    num_attention_heads=12, intermediate_size=3072, max_position_embeddings=512)).save_pretrained(base)
for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"]:
    shutil.copy(os.path.join(mini, f), base)
PY
"$pipe" -q run bench.yaml --until base_rows
results=$work/results.jsonl

# Peak RSS in KiB of a command (the largest of it and its children).
rss() { /usr/bin/time -f %M -o "$work/rss" "$@"; }
pipe_run() { # STAGE
  echo "== round $i/$repeat: pipe $1" >&2
  rss "$pipe" -q run bench.yaml --only "$1" --force "$1" --json > run.json
  python3 - "$1" run.json ".pipe/out/bench/$1/metrics.json" "$(cat "$work/rss")" >> "$results" <<'PY'
import json, sys
name, run, metrics, rss = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
s = [x for x in json.load(open(run))["stages"] if x["name"] == name][0]["stats"]
m = json.load(open(metrics))
print(json.dumps({"run": "pipe-" + name, "samples_per_s": s["samples_per_second"], "seconds": s["train_seconds"],
                  "gflops": s["gflop_per_second"], "accuracy": m["accuracy"], "mcc": m["mcc"], "rss_mib": rss / 1024}))
PY
}
py_run() { # NAME ARGS...
  local name=$1; shift
  echo "== round $i/$repeat: python $name" >&2
  HF_HUB_OFFLINE=1 rss "$py" "$ref/train_ref.py" --cola "$zip" --threads 2 --out py.json "$@" > py.log 2>&1 || { tail py.log >&2; exit 1; }
  python3 - "$name" py.json "$(cat "$work/rss")" >> "$results" <<'PY'
import json, sys
name, out, rss = sys.argv[1], sys.argv[2], int(sys.argv[3])
m = json.load(open(out)); t = m.get("test") or {}
print(json.dumps({"run": name, "samples_per_s": m["samples_per_s"], "seconds": m["train_seconds"], "gflops": m["gflop_per_s"],
                  "accuracy": t.get("accuracy"), "mcc": t.get("mcc"), "rss_mib": rss / 1024}))
PY
}

for i in $(seq "$repeat"); do
  if [[ " $models " == *" minilm "* ]]; then
    pipe_run fp32
    pipe_run bf16
    py_run py-careful --model "$model" --dynamic-padding --batch 32 --lr 1e-4 --warmup 0.1 --epochs 3
    py_run py-blog --model "$model" --max-steps 40 --skip-eval
  fi
  if [[ " $models " == *" base "* ]]; then
    pipe_run base_fp32
    pipe_run base_bf16
    py_run py-base-dynamic --model "$work/base" --dynamic-padding --max-steps 15 --skip-eval
    py_run py-base-pad64 --model "$work/base" --max-steps 15 --skip-eval
  fi
done

cp "$results" "${PIPE_BENCH_OUT:-/dev/null}" 2>/dev/null || true
lscpu | grep -E "Model name" || true
python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
flags = next((l for l in open("/proc/cpuinfo") if l.startswith("flags")), "").split()
mhz = max(float(l.split(":")[1]) for l in open("/proc/cpuinfo") if l.startswith("cpu MHz"))
ghz, cores = mhz / 1000, 2
# Per core and cycle: AVX-512 fp32, 2 FMA units x 16 lanes x 2; AMX-BF16, 1024.
fp32 = cores * ghz * (64 if "avx512f" in flags else 32)
bf16 = cores * ghz * (1024 if "amx_bf16" in flags else 128 if "avx512_bf16" in flags else 0)
print(f"peaks at {ghz:.2f} GHz x {cores} cores: fp32 {fp32:.0f} GFLOP/s" + (f", bf16 {bf16:.0f} GFLOP/s" if bf16 else ", no bf16 instructions"))
print(f"{'run':<17} {'samples/s':>9} {'each':>20} {'GFLOP/s':>8} {'of peak':>7} {'accuracy':>8} {'MCC':>6} {'RSS MiB':>8}")
med = {}
for run in dict.fromkeys(r["run"] for r in rows):
    r = [x for x in rows if x["run"] == run]
    m = statistics.median(x["samples_per_s"] for x in r); med[run] = m
    g = statistics.median(x["gflops"] for x in r)
    peak = bf16 if run.endswith("bf16") and bf16 else fp32
    q = lambda k: statistics.median(x[k] for x in r) if r[0][k] is not None else float("nan")
    each = " ".join("%.1f" % x["samples_per_s"] for x in r)
    print(f"{run:<17} {m:>9.1f} {each:>20} {g:>8.1f} {100 * g / peak:>6.1f}% {q('accuracy'):>8.3f} {q('mcc'):>6.3f} {q('rss_mib'):>8.0f}")
ratio = lambda a, b: f"{med[a] / med[b]:.2f}x"
if "pipe-fp32" in med:
  print(f"MiniLM: pipe fp32 / py-careful {ratio('pipe-fp32', 'py-careful')}, pipe bf16 / pipe fp32 {ratio('pipe-bf16', 'pipe-fp32')}, pipe fp32 / py-blog {ratio('pipe-fp32', 'py-blog')}")
if "pipe-base_fp32" in med:
  print(f"bert-base: pipe fp32 / py dynamic {ratio('pipe-base_fp32', 'py-base-dynamic')}, / py pad64 {ratio('pipe-base_fp32', 'py-base-pad64')}, pipe bf16 / pipe fp32 {ratio('pipe-base_bf16', 'pipe-base_fp32')}")
PY
