#!/usr/bin/env bash
# The GPU benchmark: pipe's finetune stage on CUDA against the Python reference
# (bench/ref/train_ref.py, transformers) on the same card, in one call.
#
#   bench/gpu.sh KIT OUT [REPEAT]   (default 3)
#
# KIT holds bin/pipe and bin/pipe-worker (release builds) and mirror/, laid
# out as --mirror wants it, with the CoLA zip and all-MiniLM-L6-v2 (its
# weights as model.safetensors, or as model.fp16.safetensors, widened back to
# fp32 here). A bert-base-sized model (12 layers, hidden 768, random weights)
# is written here. Needs nvidia-smi and a python3 with torch 2.11 (CUDA),
# transformers, scikit-learn, pandas and safetensors; pipe-worker runs against
# that torch's libraries. Runs, each REPEAT times while PIPE_GPU_BUDGET
# seconds (default 360) last:
#   careful   all-MiniLM-L6-v2, batch 32, lr 1e-4, 10% warm-up + linear decay,
#             3 epochs: pipe (fp32, bf16) and Python (dynamic padding)
#   base      the bert-base-sized model, the blog's recipe (batch 64, lr 2e-5,
#             max_len 64, 1 epoch): pipe fp32/bf16, Python fp32/bf16 with
#             dynamic padding and padded to 64
#   dp        data parallel on NCCL (libtorch's ProcessGroupNCCL through
#             pipe-worker's shim): `pipe-worker allreduce-check 1 nccl` (a
#             one-rank group and an all-reduce on the GPU, and the same with
#             gloo; run "allreduce"), `allreduce-check 2 nccl`, which must
#             refuse on a one-GPU machine (run "two-ranks"), and the careful
#             recipe with `backend: nccl`, a group of one that takes the
#             data-parallel code path (run "pipe-careful_nccl")
# PIPE_GPU_RUNS (names, space-separated, e.g. "allreduce two-ranks
# pipe-careful pipe-careful_nccl" for the data-parallel check) picks runs; PIPE_GPU_BASE="LAYERS
# HIDDEN HEADS INTERMEDIATE" (default "12 768 12 3072") sizes the random model;
# PIPE_GPU_PY_DEVICE (default cuda) is the reference's device: with small
# values the script can be tried on a CPU.
# Writes OUT/results.jsonl (a line per run: samples/s, accuracy, MCC, peak
# GPU memory as nvidia-smi sees it), OUT/env.txt, OUT/keyed.json (what a run
# without the GPU would do) and OUT/logs.tar.gz; prints the medians.
set -uo pipefail
kit=$(cd "$1" && pwd)
out=$(mkdir -p "$2" && cd "$2" && pwd)
repeat=${3:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
deadline=$((SECONDS + ${PIPE_GPU_BUDGET:-360}))
py=${PIPE_REF_PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/pipe-gpu.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/logs"
torchlib=$("$py" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH=$torchlib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PIPE_WORKER=$kit/bin/pipe-worker XDG_CACHE_HOME=$work/cache HF_HUB_OFFLINE=1
export PIPE_DIST_TIMEOUT=60
unset RANK WORLD_SIZE LOCAL_RANK MASTER_ADDR MASTER_PORT SLURM_PROCID JOB_COMPLETION_INDEX
pipe=$kit/bin/pipe
selected() { case " ${PIPE_GPU_RUNS:-$1} " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  "$py" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)'
  lscpu | grep -E "Model name|^CPU\(s\)"
  echo "torch lib: $torchlib"
  ldd "$PIPE_WORKER" | grep -E "torch|c10"
  echo "pipe-worker info: $("$PIPE_WORKER" info)"
} > "$out/env.txt" 2>&1
cat "$out/env.txt"

if selected allreduce; then
  for b in nccl gloo; do
    start=$(date +%s%N)
    "$PIPE_WORKER" allreduce-check 1 $b > "$work/ar.json" 2> "$work/logs/allreduce-$b.err"
    rc=$?
    ms=$(( ($(date +%s%N) - start) / 1000000 ))
    echo "allreduce-check 1 $b: exit $rc, $ms ms: $(cat "$work/ar.json") $(tail -1 "$work/logs/allreduce-$b.err")" >&2
    echo "{\"run\": \"allreduce-$b\", \"exit\": $rc, \"wall_ms\": $ms, \"answer\": $([ -s "$work/ar.json" ] && cat "$work/ar.json" || echo null)}" >> "$out/results.jsonl"
  done
fi
if selected two-ranks; then
  timeout 150 "$PIPE_WORKER" allreduce-check 2 nccl > /dev/null 2> "$work/logs/two-ranks.err"
  rc=$?
  echo "allreduce-check 2 nccl: exit $rc: $(tail -1 "$work/logs/two-ranks.err")" >&2
  "$py" -c 'import json,sys; print(json.dumps({"run": "two-ranks", "exit": int(sys.argv[1]), "error": sys.argv[2]}))' \
    "$rc" "$(tail -1 "$work/logs/two-ranks.err")" >> "$out/results.jsonl"
fi

mirror=$work/mirror
cp -rL "$kit/mirror" "$mirror" && chmod -R u+w "$mirror"
export PIPE_MIRROR=$mirror
mini=$mirror/huggingface.co/sentence-transformers/all-MiniLM-L6-v2/resolve/main
base=$mirror/huggingface.co/pipe-bench/bert-base-random/resolve/main
zip=$mirror/nyu-mll.github.io/CoLA/cola_public_1.1.zip
read -r layers hidden heads inter <<< "${PIPE_GPU_BASE:-12 768 12 3072}"
"$py" - "$mini" "$base" "$layers" "$hidden" "$heads" "$inter" <<'PY' || exit 1
import os, shutil, sys, torch
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertForSequenceClassification
mini, base = sys.argv[1:3]
layers, hidden, heads, inter = map(int, sys.argv[3:])
half = os.path.join(mini, "model.fp16.safetensors")
if os.path.exists(half):
    t = load_file(half)
    save_file({k: v.float() if v.is_floating_point() else v for k, v in t.items()}, os.path.join(mini, "model.safetensors"))
    os.remove(half)
torch.manual_seed(0)
cfg = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                 intermediate_size=inter, max_position_embeddings=512)
BertForSequenceClassification(cfg).save_pretrained(base)
for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"]:
    shutil.copy(os.path.join(mini, f), base)
PY

ws=$work/ws
mkdir -p "$ws" && cd "$ws" || exit 1
git init -q . 2>/dev/null
files='[config.json, model.safetensors, tokenizer.json, tokenizer_config.json, special_tokens_map.json, vocab.txt]'
cat > gpu.yaml <<YAML
version: 1
name: gpu
stages:
  data:
    kind: download
    with: {url: "https://nyu-mll.github.io/CoLA/cola_public_1.1.zip", extract: zip}
  split:
    kind: split
    inputs: {data: "data:cola_public/raw/in_domain_train.tsv"}
    with: {format: tsv, header: false, text_column: 3, label_column: 1, test_fraction: 0.25, seed: 42}
  minilm:
    kind: download
    with: {hf: sentence-transformers/all-MiniLM-L6-v2, files: $files}
  base:
    kind: download
    with: {hf: pipe-bench/bert-base-random, files: $files}
  careful:
    kind: finetune
    inputs: {model: "minilm:", data: "split:"}
    with: {epochs: 3, batch_size: 32, lr: 1e-4, warmup_ratio: 0.1, schedule: linear, bf16: false}
  careful_nccl:
    kind: finetune
    inputs: {model: "minilm:", data: "split:"}
    with: {epochs: 3, batch_size: 32, lr: 1e-4, warmup_ratio: 0.1, schedule: linear, bf16: false, backend: nccl}
  careful_bf16:
    kind: finetune
    inputs: {model: "minilm:", data: "split:"}
    with: {epochs: 3, batch_size: 32, lr: 1e-4, warmup_ratio: 0.1, schedule: linear, bf16: true}
  base_fp32:
    kind: finetune
    inputs: {model: "base:", data: "split:"}
    with: {epochs: 1, batch_size: 64, lr: 2e-5, max_len: 64, bf16: false}
  base_bf16:
    kind: finetune
    inputs: {model: "base:", data: "split:"}
    with: {epochs: 1, batch_size: 64, lr: 2e-5, max_len: 64, bf16: true}
YAML
for s in split minilm base; do
  "$pipe" -q run gpu.yaml --until $s > /dev/null 2> "$work/logs/setup-$s.err" || { cat "$work/logs/setup-$s.err"; exit 1; }
done

# Peak memory.used on the card while a command runs, less what was used before.
measure() { # NAME ROUND OUTFILE COMMAND...
  local name=$1 round=$2 res=$3; shift 3
  selected "$name" || return 0
  local before; before=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 > "$work/mem.txt" 2>/dev/null &
  local smi=$!
  "$@" > "$work/logs/$name-$round.out" 2> "$work/logs/$name-$round.err"
  local rc=$?
  kill "$smi" 2>/dev/null; wait "$smi" 2>/dev/null
  local peak; peak=$(sort -n "$work/mem.txt" | tail -1)
  echo "$name round $round: exit $rc" >&2
  [ $rc -eq 0 ] || { tail -5 "$work/logs/$name-$round.err" >&2; return 0; }
  "$py" - "$name" "$round" "$res" "$((${peak:-0} - ${before:-0}))" >> "$out/results.jsonl" <<'PY'
import json, sys
name, rnd, res, mem = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
row = {"run": name, "round": rnd, "peak_gpu_mib": mem}
r = json.load(open(res))
if name.startswith("pipe"):
    st = [s for s in r["stages"] if s["name"] == name[len("pipe-"):]][0]
    m = json.load(open(f".pipe/out/gpu/{st['name']}/metrics.json"))
    row.update(samples_per_s=st["stats"]["samples_per_second"], train_seconds=st["stats"]["train_seconds"],
               allreduce_seconds=st["stats"].get("allreduce_seconds"),
               accuracy=m["accuracy"], mcc=m["mcc"], device=m["device"])
else:
    row.update(samples_per_s=r["samples_per_s"], train_seconds=r["train_seconds"], accuracy=r["test"]["accuracy"],
               mcc=r["test"]["mcc"], device=r["device"], torch_peak_allocated_mib=r.get("peak_gpu_mem_mb"))
print(json.dumps(row))
PY
}
pipe_stage() { # STAGE ROUND
  measure "pipe-$1" "$2" "$work/run.json" sh -c '"$0" -q run gpu.yaml --only "$1" --force "$1" --json > "$2"' "$pipe" "$1" "$work/run.json"
  cp ".pipe/logs/gpu/$1.log" "$work/logs/pipe-$1-$2.log" 2>/dev/null
  cp "$work/run.json" "$work/logs/pipe-$1-$2.json" 2>/dev/null
}
py_run() { # NAME ROUND ARGS...
  local name=$1 round=$2; shift 2
  measure "$name" "$round" "$work/py.json" "$py" "$root/bench/ref/train_ref.py" --cola "$zip" --threads "$(nproc)" --device "${PIPE_GPU_PY_DEVICE:-cuda}" --out "$work/py.json" "$@"
}
careful=(--dynamic-padding --batch 32 --lr 1e-4 --warmup 0.1 --epochs 3)
blog=(--model "$base" --batch 64 --lr 2e-5 --epochs 1)
for round in $(seq "$repeat"); do
  [ $round -eq 1 ] || [ $SECONDS -lt $deadline ] || { echo "budget spent after $((round - 1)) rounds" >&2; break; }
  pipe_stage careful "$round"
  pipe_stage careful_nccl "$round"
  pipe_stage careful_bf16 "$round"
  pipe_stage base_fp32 "$round"
  pipe_stage base_bf16 "$round"
  py_run py-careful "$round" --model "$mini" "${careful[@]}"
  py_run py-base-fp32-dynamic "$round" "${blog[@]}" --dynamic-padding
  py_run py-base-bf16-dynamic "$round" "${blog[@]}" --dynamic-padding --bf16
  py_run py-base-fp32-pad64 "$round" "${blog[@]}"
  py_run py-base-bf16-pad64 "$round" "${blog[@]}" --bf16
  if [ $round -eq 1 ]; then
    # Keyed apart: without the GPU, `device: auto` is the CPU, a new key.
    CUDA_VISIBLE_DEVICES= "$pipe" status gpu.yaml --json > "$out/keyed.json" 2> "$work/logs/keyed.err"
  fi
done
(cd "$work" && tar czf "$out/logs.tar.gz" logs)
"$py" - "$out/results.jsonl" <<'PY'
import json, statistics, sys
rows = [r for r in map(json.loads, open(sys.argv[1])) if "samples_per_s" in r]
runs = list(dict.fromkeys(r["run"] for r in rows))
med = lambda k, rs: statistics.median(r[k] for r in rs)
print(f"{'run':<24} {'samples/s':>10} {'each':>26} {'accuracy':>9} {'MCC':>7} {'peak MiB':>9}")
for n in runs:
    rs = [r for r in rows if r["run"] == n]
    each = " ".join("%.0f" % r["samples_per_s"] for r in rs)
    print(f"{n:<24} {med('samples_per_s', rs):>10.1f} {each:>26} {med('accuracy', rs):>9.4f} {med('mcc', rs):>7.4f} {med('peak_gpu_mib', rs):>9.0f}")
PY
