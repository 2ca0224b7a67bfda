#!/usr/bin/env bash
# The data-parallel path on a GPU: libtorch's ProcessGroupNCCL through
# pipe-worker's NCCL shim, on one card, in one call.
#
#   bench/gpu-dp.sh KIT OUT [REPEAT]   (default 2)
#
# KIT as for bench/gpu.sh (bin/pipe, bin/pipe-worker, mirror/ with the CoLA
# zip and all-MiniLM-L6-v2). Needs nvidia-smi and a python3 with torch 2.11
# (CUDA): pipe-worker runs against that torch's libraries. Runs:
#   allreduce   `pipe-worker allreduce-check 1 nccl`: a one-rank NCCL group
#               on a TCPStore at 127.0.0.1 and an all-reduce on the GPU; the
#               same with gloo
#   two-ranks   `allreduce-check 2 nccl` on a one-GPU machine: must fail,
#               saying that local rank 1 has no GPU
#   finetune    all-MiniLM-L6-v2, the careful recipe (batch 32, lr 1e-4, 3
#               epochs, fp32) on CUDA with nproc_per_node: 1, alone and with
#               `backend: nccl`, which runs the data-parallel code path as a
#               group of one (a flattened all-reduce every step), REPEAT times
#               each, alternating
# PIPE_GPU_DEVICE (cuda), PIPE_GPU_BACKEND (nccl) and PIPE_GPU_EPOCHS (3)
# let the script be tried on a CPU (cpu, gloo, 1).
# Writes OUT/results.jsonl, OUT/env.txt and OUT/logs.tar.gz; prints medians.
set -uo pipefail
kit=$(cd "$1" && pwd)
out=$(mkdir -p "$2" && cd "$2" && pwd)
repeat=${3:-2}
py=${PIPE_REF_PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/pipe-gpu-dp.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/logs"
torchlib=$("$py" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH=$torchlib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PIPE_WORKER=$kit/bin/pipe-worker XDG_CACHE_HOME=$work/cache PIPE_DIST_TIMEOUT=60
unset RANK WORLD_SIZE LOCAL_RANK MASTER_ADDR MASTER_PORT SLURM_PROCID JOB_COMPLETION_INDEX
pipe=$kit/bin/pipe
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "nccl", torch.cuda.nccl.version())'
  lscpu | grep -E "Model name|^CPU\(s\)"
  echo "pipe-worker info: $("$PIPE_WORKER" info)"
} > "$out/env.txt" 2>&1
cat "$out/env.txt"

device=${PIPE_GPU_DEVICE:-cuda} backend=${PIPE_GPU_BACKEND:-nccl} epochs=${PIPE_GPU_EPOCHS:-3}
for b in nccl gloo; do
  start=$(date +%s%N)
  "$PIPE_WORKER" allreduce-check 1 $b > "$work/ar.json" 2> "$work/logs/allreduce-$b.err"
  rc=$?
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  echo "allreduce-check 1 $b: exit $rc, $ms ms: $(cat "$work/ar.json") $(tail -1 "$work/logs/allreduce-$b.err")" >&2
  echo "{\"run\": \"allreduce-$b\", \"exit\": $rc, \"wall_ms\": $ms, \"answer\": $([ -s "$work/ar.json" ] && cat "$work/ar.json" || echo null)}" >> "$out/results.jsonl"
done
timeout 150 "$PIPE_WORKER" allreduce-check 2 nccl > /dev/null 2> "$work/logs/two-ranks.err"
rc=$?
echo "allreduce-check 2 nccl on one GPU: exit $rc: $(tail -1 "$work/logs/two-ranks.err")" >&2
"$py" -c 'import json,sys; print(json.dumps({"run": "two-ranks-one-gpu", "exit": int(sys.argv[1]), "error": sys.argv[2]}))' \
  "$rc" "$(tail -1 "$work/logs/two-ranks.err")" >> "$out/results.jsonl"

mirror=$work/mirror
cp -rL "$kit/mirror" "$mirror" && chmod -R u+w "$mirror"
export PIPE_MIRROR=$mirror
mini=$mirror/huggingface.co/sentence-transformers/all-MiniLM-L6-v2/resolve/main
"$py" - "$mini" <<'PY' || exit 1
import os, sys
from safetensors.torch import load_file, save_file
half = os.path.join(sys.argv[1], "model.fp16.safetensors")
if os.path.exists(half):
    t = load_file(half)
    save_file({k: v.float() if v.is_floating_point() else v for k, v in t.items()}, os.path.join(sys.argv[1], "model.safetensors"))
    os.remove(half)
PY
ws=$work/ws
mkdir -p "$ws" && cd "$ws" || exit 1
files='[config.json, model.safetensors, tokenizer.json, tokenizer_config.json, special_tokens_map.json, vocab.txt]'
cat > dp.yaml <<YAML
version: 1
name: dp
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
  careful:
    kind: finetune
    inputs: {model: "minilm:", data: "split:"}
    with: {epochs: $epochs, batch_size: 32, lr: 1e-4, warmup_ratio: 0.1, schedule: linear, bf16: false, device: $device}
  careful_nccl:
    kind: finetune
    inputs: {model: "minilm:", data: "split:"}
    with: {epochs: $epochs, batch_size: 32, lr: 1e-4, warmup_ratio: 0.1, schedule: linear, bf16: false, device: $device, backend: $backend}
YAML
for s in split minilm; do
  "$pipe" -q run dp.yaml --until $s > /dev/null 2> "$work/logs/setup-$s.err" || { cat "$work/logs/setup-$s.err"; exit 1; }
done
run() { # STAGE ROUND
  local name=$1 round=$2
  "$pipe" -q run dp.yaml --only $name --force $name --json > "$work/run.json" 2> "$work/logs/$name-$round.err"
  local rc=$?
  cp .pipe/logs/dp/$name.log "$work/logs/$name-$round.log" 2>/dev/null
  echo "$name round $round: exit $rc" >&2
  [ $rc -eq 0 ] || { tail -5 "$work/logs/$name-$round.err" >&2; return 0; }
  "$py" - "$name" "$round" "$work/run.json" >> "$out/results.jsonl" <<'PY'
import json, sys
name, rnd, res = sys.argv[1], int(sys.argv[2]), sys.argv[3]
st = [s for s in json.load(open(res))["stages"] if s["name"] == name][0]["stats"]
m = json.load(open(f".pipe/out/dp/{name}/metrics.json"))
print(json.dumps({"run": name, "round": rnd, "samples_per_s": st["samples_per_second"],
    "train_seconds": st["train_seconds"], "allreduce_seconds": st.get("allreduce_seconds"),
    "world_size": st.get("world_size"), "accuracy": m["accuracy"], "mcc": m["mcc"], "device": m["device"]}))
PY
}
for round in $(seq "$repeat"); do
  run careful "$round"
  run careful_nccl "$round"
done
grep -h "data parallel\|device" "$work"/logs/*.log | sort | uniq -c >&2
(cd "$work" && tar czf "$out/logs.tar.gz" logs)
"$py" - "$out/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if "samples_per_s" in l]
for n in dict.fromkeys(r["run"] for r in rows):
    rs = [r for r in rows if r["run"] == n]
    med = lambda k: statistics.median(r[k] or 0 for r in rs)
    print(f"{n:<14} samples/s {med('samples_per_s'):8.1f} ({' '.join('%.0f' % r['samples_per_s'] for r in rs)})"
          f"  all-reduce {med('allreduce_seconds'):.2f} s of {med('train_seconds'):.1f} s"
          f"  accuracy {med('accuracy'):.4f}  MCC {med('mcc'):.4f}")
PY
