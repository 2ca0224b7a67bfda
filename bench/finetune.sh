#!/usr/bin/env bash
# Fine-tuning benchmark: all-MiniLM-L6-v2 on the CoLA train split (6413 rows,
# test_fraction 0.25, split seed 42), `pipe`'s finetune stage side by side with
# the Python (transformers) reference, alternating, each REPEAT times; medians.
#
#   PIPE_REF_BENCH=DIR PIPE_REF_PYTHON=PY bench/finetune.sh [REPEAT]   (default 3)
#
# PIPE_REF_BENCH: the folder holding the reference scripts (train_ref.py);
# PIPE_REF_PYTHON: a python with torch 2.11 and transformers. Set PIPE_MIRROR
# to work offline. Recipes:
#   pipe:       dynamic padding, length-grouped batches, batch 32, lr 1e-4,
#               10% warmup + linear decay, 3 epochs, 2 threads
#   py-careful: the same recipe in transformers (dynamic padding, random batches)
#   py-blog:    the blog's recipe (fixed padding to 64, batch 64, lr 2e-5);
#               throughput only, over its first 40 steps
set -euo pipefail
repeat=${1:-3}
. "$(dirname "$0")/common.sh"
bench_setup finetune <<'YAML'
  finetune:
    kind: finetune
    inputs: {model: "bert:", data: "split:"}
    with: {epochs: 3, batch_size: 32, lr: 1e-4, warmup_ratio: 0.1, schedule: linear, threads: 2}
YAML
"$pipe" -q run bench.yaml --until bert
model=$work/.pipe/out/bench/bert
results=$work/results.jsonl

for i in $(seq "$repeat"); do
  echo "== round $i/$repeat: pipe" >&2
  # Timings live in the run record (stats in --json), quality in metrics.json.
  "$pipe" -q run bench.yaml --force finetune --json > run.json
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); s=[x for x in r["stages"] if x["name"]=="finetune"][0]["stats"]; m=json.load(open(sys.argv[2])); print(json.dumps({"run":"pipe","samples_per_s":s["samples_per_second"],"seconds":s["train_seconds"],"accuracy":m["accuracy"],"mcc":m["mcc"]}))' \
    run.json .pipe/out/bench/finetune/metrics.json >> "$results"
  echo "== round $i/$repeat: python, careful recipe" >&2
  HF_HUB_OFFLINE=1 "$py" "$ref/train_ref.py" --cola "$zip" --model "$model" --dynamic-padding --batch 32 --lr 1e-4 --warmup 0.1 --epochs 3 --threads 2 --out py.json > py.log 2>&1 || { tail py.log >&2; exit 1; }
  python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(json.dumps({"run":"py-careful","samples_per_s":m["samples_per_s"],"seconds":m["train_seconds"],"accuracy":m["test"]["accuracy"],"mcc":m["test"]["mcc"]}))' py.json >> "$results"
  echo "== round $i/$repeat: python, blog recipe (40 steps)" >&2
  HF_HUB_OFFLINE=1 "$py" "$ref/train_ref.py" --cola "$zip" --model "$model" --max-steps 40 --threads 2 --out py.json > py.log 2>&1 || { tail py.log >&2; exit 1; }
  python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(json.dumps({"run":"py-blog","samples_per_s":m["samples_per_s"],"seconds":m["train_seconds"],"accuracy":None,"mcc":None}))' py.json >> "$results"
done

cp "$results" "${PIPE_BENCH_OUT:-/dev/null}" 2>/dev/null || true
python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'run':<11} {'samples/s (median)':>18} {'all':>24} {'train s':>8} {'accuracy':>9} {'MCC':>6}")
med = {}
for run in ["pipe", "py-careful", "py-blog"]:
    r = [x for x in rows if x["run"] == run]
    m = statistics.median(x["samples_per_s"] for x in r); med[run] = m
    acc = statistics.median(x["accuracy"] for x in r) if r[0]["accuracy"] is not None else float("nan")
    mcc = statistics.median(x["mcc"] for x in r) if r[0]["mcc"] is not None else float("nan")
    each = " ".join("%.1f" % x["samples_per_s"] for x in r)
    secs = statistics.median(x["seconds"] for x in r)
    print(f"{run:<11} {m:>18.1f} {each:>24} {secs:>8.0f} {acc:>9.3f} {mcc:>6.3f}")
print(f"pipe / py-careful: {med['pipe'] / med['py-careful']:.2f}x   pipe / py-blog: {med['pipe'] / med['py-blog']:.2f}x")
PY
