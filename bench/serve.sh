#!/usr/bin/env bash
# Serving benchmark: all-MiniLM-L6-v2 fine-tuned on CoLA behind `pipe serve`,
# over HTTP on 127.0.0.1, against the Python (transformers) reference measured
# in-process without HTTP; alternating, REPEAT times; medians.
#
#   PIPE_REF_BENCH=DIR PIPE_REF_PYTHON=PY bench/serve.sh [REPEAT]   (default 3)
#
# Per round: one client sending 300 single-sentence requests (latency), then 32
# clients each sending 40 (throughput), for each server layout: 2 inference
# workers × 1 intra-op thread sharing one model (the default on 2 cores: a
# worker that runs alone uses both threads), the same with `--bf16 false`
# (fp32 linear layers at every size) and with `--int8`, 1 worker × 2
# threads, 1 worker × 1 thread. In the first round, the 2 × 1 layouts also
# classify CoLA's in-domain dev set in requests of 32 sentences: how many
# predictions bf16 and int8 change against fp32, and the accuracies.
# Set PIPE_MIRROR to work offline.
set -euo pipefail
repeat=${1:-3}
. "$(dirname "$0")/common.sh"
bench_setup serve <<'YAML'
  finetune:
    kind: finetune
    inputs: {model: "bert:", data: "split:"}
    with: {epochs: 1, batch_size: 32, lr: 1e-4, warmup_ratio: 0.1, schedule: linear}
  trace:
    kind: trace
    inputs: {model: "finetune:"}
  package:
    kind: package
    inputs: {model: "trace:"}
YAML
load=$root/target/release/examples/load
server=
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
"$pipe" -q run bench.yaml
python3 -c 'import io,sys,zipfile,csv
z=zipfile.ZipFile(sys.argv[1]); rows=z.read("cola_public/raw/in_domain_dev.tsv").decode().splitlines()
print("\n".join(r.split("\t")[3] for r in rows if r.count("\t")>=3))' "$zip" > sentences.txt
results=$work/results.jsonl

python3 -c 'import io,sys,zipfile
z=zipfile.ZipFile(sys.argv[1]); rows=z.read("cola_public/raw/in_domain_dev.tsv").decode().splitlines()
print("\n".join(r.split("\t")[1] for r in rows if r.count("\t")>=3))' "$zip" > labels.txt

serve() { # WORKERS THREADS BF16|int8
  local precision=(--bf16 "$3"); [ "$3" = int8 ] && precision=(--int8)
  "$pipe" serve .pipe/out/bench/package/model.tar.gz --port 0 --announce --workers "$1" --threads "$2" "${precision[@]}" > ready.json 2> server.log &
  server=$!
  while [ ! -s ready.json ]; do kill -0 "$server" || { cat server.log >&2; exit 1; }; sleep 0.1; done
  url=$(python3 -c 'import json,sys; print(json.load(open("ready.json"))["ready"])')
}
# The server's peak RSS (MiB) so far; `pipe serve` execs into pipe-worker, so
# the pid stays the same.
peak_rss() { awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$server/status"; }
stop() { kill "$server"; wait "$server" || true; server=; rm -f ready.json; }

for i in $(seq "$repeat"); do
  for layout in "2 1 auto" "2 1 false" "2 1 int8" "1 2 auto" "1 1 auto"; do
    set -- $layout
    name="pipe $1x$2"
    case $3 in auto) ;; int8) name="$name int8" ;; *) name="$name bf16=$3" ;; esac
    echo "== round $i/$repeat: $name" >&2
    serve "$1" "$2" "$3"
    "$load" "$url" sentences.txt 1 20 > /dev/null   # warm up
    single=$("$load" "$url" sentences.txt 1 300)
    many=$("$load" "$url" sentences.txt 32 40)
    if [ "$i" = 1 ] && [ "$1 $2" = "2 1" ]; then
      python3 - "$url" sentences.txt labels.txt > "classes-$3.json" <<'PY'
import json, sys, urllib.request
url, texts, labels = sys.argv[1], open(sys.argv[2]).read().splitlines(), open(sys.argv[3]).read().splitlines()
out = []
for k in range(0, len(texts), 32):
    req = urllib.request.Request(url + "/invocations", json.dumps(texts[k:k + 32]).encode(), {"content-type": "application/json"})
    rows = json.load(urllib.request.urlopen(req))
    out += [max(range(len(r)), key=r.__getitem__) for r in rows]
print(json.dumps({"classes": out, "accuracy": sum(int(c) == int(l) for c, l in zip(out, labels)) / len(out)}))
PY
    fi
    rss=$(peak_rss)
    stop
    python3 -c 'import json,sys; s=json.loads(sys.argv[1]); m=json.loads(sys.argv[2]); print(json.dumps({"run": sys.argv[3], "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"], "per_s": m["requests_per_s"], "errors": s["errors"] + m["errors"], "peak_rss_mib": float(sys.argv[4])}))' "$single" "$many" "$name" "$rss" >> "$results"
  done
  echo "== round $i/$repeat: python in-process" >&2
  # Its peak RSS: the reference runs as a child of this small launcher.
  HF_HUB_OFFLINE=1 "$py" -c 'import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)' \
    "$py" "$ref/serve_ref.py" --model .pipe/out/bench/finetune --cola "$zip" --threads 2 --out py.json > py.log 2>&1 || { tail py.log >&2; exit 1; }
  python3 -c 'import json,sys; m=json.load(open("py.json")); print(json.dumps({"run": "python", "p50_ms": m["eager_single_ms"]["p50"], "p99_ms": m["eager_single_ms"]["p99"], "per_s": m["batch32_sentences_per_s"], "errors": 0, "peak_rss_mib": float(sys.argv[1])}))' "$(tail -1 py.log)" >> "$results"
done

cp "$results" "${PIPE_BENCH_OUT:-/dev/null}" 2>/dev/null || true
python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'run':<20} {'p50 ms':>8} {'p99 ms':>8} {'32 clients req/s':>17} {'errors':>7} {'peak RSS MiB':>13}")
for run in dict.fromkeys(r["run"] for r in rows):
    r = [x for x in rows if x["run"] == run]
    med = lambda k: statistics.median(x[k] for x in r)
    print(f"{run:<20} {med('p50_ms'):>8.2f} {med('p99_ms'):>8.2f} {med('per_s'):>17.1f} {sum(x['errors'] for x in r):>7} {med('peak_rss_mib'):>13.1f}")
print("(python: in-process, no HTTP; its throughput column is batch-32 sentences/s)")
PY
python3 - <<'PY'
import json
fp32 = json.load(open("classes-false.json"))
for flag, name in (("--bf16 auto", "auto"), ("--int8", "int8")):
    a = json.load(open(f"classes-{name}.json"))
    same = sum(x == y for x, y in zip(a["classes"], fp32["classes"]))
    print(f"CoLA in-domain dev, {len(a['classes'])} sentences in requests of 32: {flag} gives the class of "
          f"--bf16 false for {same} ({100 * same / len(a['classes']):.2f}%); accuracy {a['accuracy']:.4f} vs {fp32['accuracy']:.4f}")
PY
