#!/usr/bin/env bash
# Data-parallel fine-tuning on one machine's CPU: all-MiniLM-L6-v2 on the
# CoLA split with the careful recipe (batch 32, lr 1e-4, 10% warm-up + linear
# decay, 3 epochs, fp32), each REPEAT times (default 3), alternating; medians:
#   pipe-1x2: one process, 2 threads
#   pipe-2x1: `nproc_per_node: 2`, 2 gloo ranks of 1 thread
#   ddp-2x1:  `torchrun --nproc-per-node 2` with DistributedDataParallel (gloo),
#             1 thread each, the same recipe (bench/ref/train_ddp.py)
#
#   PIPE_REF_PYTHON=PY bench/dp.sh [REPEAT]
#
# PIPE_REF_PYTHON: a python with torch 2.11, transformers, scikit-learn and
# pandas (its torchrun is used). Set PIPE_MIRROR to work offline. Prints
# samples/s, test accuracy and MCC, and the share of pipe's training time
# spent in the gradient all-reduce.
set -euo pipefail
repeat=${1:-3}
export PIPE_REF_BENCH=${PIPE_REF_BENCH:-$(cd "$(dirname "$0")" && pwd)/ref}
. "$(dirname "$0")/common.sh"
bench_setup dp <<'YAML'
  one:
    kind: finetune
    inputs: {model: "bert:", data: "split:"}
    with: {epochs: 3, batch_size: 32, lr: 1e-4, warmup_ratio: 0.1, schedule: linear, threads: 2, bf16: false}
  two:
    kind: finetune
    inputs: {model: "bert:", data: "split:"}
    with: {epochs: 3, batch_size: 32, lr: 1e-4, warmup_ratio: 0.1, schedule: linear, threads: 2, bf16: false, nproc_per_node: 2}
YAML
"$pipe" -q run bench.yaml --until cola
"$pipe" -q run bench.yaml --until split
"$pipe" -q run bench.yaml --until bert
model=$work/.pipe/out/bench/bert
results=$work/results.jsonl
torchrun=$(dirname "$py")/torchrun

for i in $(seq "$repeat"); do
  for stage in one two; do
    echo "== round $i/$repeat: pipe $stage" >&2
    "$pipe" -q run bench.yaml --only $stage --force $stage --json > run.json ||
      { tail -20 ".pipe/logs/bench/$stage.log" >&2; grep -h '"error"' run.json >&2; exit 1; }
    python3 - $stage run.json ".pipe/out/bench/$stage/metrics.json" >> "$results" <<'PY'
import json, sys
name, run, metrics = sys.argv[1:]
s = [x for x in json.load(open(run))["stages"] if x["name"] == name][0]["stats"]
m = json.load(open(metrics))
print(json.dumps({"run": {"one": "pipe-1x2", "two": "pipe-2x1"}[name], "samples_per_s": s["samples_per_second"],
                  "accuracy": m["accuracy"], "mcc": m["mcc"],
                  "allreduce_share": s.get("allreduce_seconds", 0) / s["train_seconds"]}))
PY
  done
  echo "== round $i/$repeat: torchrun DDP" >&2
  HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 "$torchrun" --nproc-per-node 2 --master-addr 127.0.0.1 --master-port 29533 \
    "$ref/train_ddp.py" --cola "$zip" --model "$model" --threads 1 --out ddp.json > ddp.log 2>&1 || { tail ddp.log >&2; exit 1; }
  python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(json.dumps({"run":"ddp-2x1","samples_per_s":m["samples_per_s"],"accuracy":m["test"]["accuracy"],"mcc":m["test"]["mcc"],"allreduce_share":None}))' ddp.json >> "$results"
done

cp "$results" "${PIPE_BENCH_OUT:-/dev/null}" 2>/dev/null || true
lscpu | grep -E "Model name" || true
python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = {}
print(f"{'run':<9} {'samples/s':>9} {'each':>20} {'accuracy':>8} {'MCC':>6} {'all-reduce':>10}")
for run in ["pipe-1x2", "pipe-2x1", "ddp-2x1"]:
    r = [x for x in rows if x["run"] == run]
    med[run] = statistics.median(x["samples_per_s"] for x in r)
    q = lambda k: statistics.median(x[k] for x in r)
    share = f"{100 * q('allreduce_share'):.1f}%" if r[0]["allreduce_share"] is not None else "-"
    each = " ".join("%.1f" % x["samples_per_s"] for x in r)
    print(f"{run:<9} {med[run]:>9.1f} {each:>20} {q('accuracy'):>8.3f} {q('mcc'):>6.3f} {share:>10}")
print(f"pipe 2x1 / DDP 2x1: {med['pipe-2x1'] / med['ddp-2x1']:.2f}x   pipe 2x1 / pipe 1x2: {med['pipe-2x1'] / med['pipe-1x2']:.2f}x")
PY
