#!/usr/bin/env bash
# Remote cache benchmark: `pipe pull`/`pipe push` side by side with DVC 3.67
# (`dvc pull`/`dvc push`, dvc[s3]) against the same local S3-compatible server
# (moto, installed by scripts/setup-test-tools), medians of RUNS rounds:
#   (a) model outputs: all-MiniLM-L6-v2 (pretrained), a fine-tuned stand-in of
#       the same size (the weights' bytes rewritten), `model.pt` and
#       `model.tar.gz` stand-ins: about 330 MB in 4 stage outputs;
#   (b) one stage output of 20,000 files of 1 KB;
# and a no-op push of (b) (everything already remote).
#
#   PIPE_MIRROR=DIR bench/remote.sh [RUNS]      (default 3)
#
# DIR is the offline mirror the tests use (it holds all-MiniLM-L6-v2). DVC is
# installed into $PIPE_BENCH_VENV (default ~/.cache/pipe-bench/dvc-s3) with pip
# if it is missing. Each pull starts from a fresh clone: the manifest and its
# NAME.lock for pipe, the git repository with its .dvc files for DVC.
set -euo pipefail
runs=${1:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${PIPE_BENCH_VENV:-$HOME/.cache/pipe-bench/dvc-s3}
: "${PIPE_MIRROR:?set PIPE_MIRROR to the offline mirror (it holds all-MiniLM-L6-v2)}"
moto=$root/.tools/moto/bin/moto_server
[ -x "$moto" ] || { echo "bench/remote.sh needs $moto: run scripts/setup-test-tools" >&2; exit 2; }
if [ ! -x "$venv/bin/dvc" ]; then
  python3 -m venv "$venv" && "$venv/bin/pip" install -q "dvc[s3]==3.67.*"
fi
dvc=$venv/bin/dvc
# PIPE_BENCH_PROFILE=debug measures the debug build (sha2 is optimised in it too).
profile=${PIPE_BENCH_PROFILE:-release}
if [ "$profile" = release ]; then
  (cd "$root" && cargo build --release -q --bin pipe -p pipe)
else
  (cd "$root" && cargo build -q --bin pipe -p pipe)
fi
pipe=$root/target/$profile/pipe
work=$(mktemp -d "${TMPDIR:-/tmp}/pipe-bench-remote.XXXXXX")

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$moto" -H 127.0.0.1 -p "$port" > "$work/moto.log" 2>&1 &
moto_pid=$!
trap 'kill $moto_pid; rm -rf "$work"' EXIT
until curl -s -o /dev/null "http://127.0.0.1:$port/"; do sleep 0.2; done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$port
for bucket in pipe dvc; do
  curl -sf -X PUT -H "Authorization: AWS4-HMAC-SHA256 Credential=bench/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00" \
    "$AWS_ENDPOINT_URL/$bucket" > /dev/null
done

# Seconds taken by a command (its output discarded).
secs() {
  local t0 t1
  t0=$(date +%s%N)
  "$@" > /dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }
  t1=$(date +%s%N)
  echo "scale=2; ($t1 - $t0) / 1000000000" | bc
}
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }

echo "== set-up: build the outputs with pipe, copy them into a DVC repository"
mkdir -p "$work/a" "$work/b"
cat > "$work/a/model.yaml" <<'YAML'
version: 1
name: model
stages:
  pretrained:
    kind: download
    with: {hf: sentence-transformers/all-MiniLM-L6-v2, files: [config.json, model.safetensors, tokenizer.json, tokenizer_config.json, special_tokens_map.json, vocab.txt]}
  finetuned:
    kind: shell
    inputs: {m: "pretrained:"}
    with: {cmd: "cp $PIPE_IN_M/*.json $PIPE_IN_M/vocab.txt $PIPE_OUT/ && tr '\\000' '\\001' < $PIPE_IN_M/model.safetensors > $PIPE_OUT/model.safetensors"}
  traced:
    kind: shell
    inputs: {m: "finetuned:model.safetensors"}
    with: {cmd: "tr '\\001' '\\002' < $PIPE_IN_M > $PIPE_OUT/model.pt"}
  package:
    kind: shell
    inputs: {pt: "traced:model.pt"}
    with: {cmd: "tar czf $PIPE_OUT/model.tar.gz -C $(dirname $PIPE_IN_PT) model.pt"}
YAML
cat > "$work/b/gen.py" <<'PY'
import random, sys
for i in range(20000):
    with open(f"{sys.argv[1]}/{i:05}.txt", "wb") as f:
        f.write(random.Random(i).randbytes(1024))
PY
cat > "$work/b/small.yaml" <<'YAML'
version: 1
name: small
stages:
  files:
    kind: shell
    inputs: {gen: gen.py}
    with: {cmd: "python3 $PIPE_IN_GEN $PIPE_OUT"}
YAML
(cd "$work/a" && git init -q . && "$pipe" run model.yaml -q)
(cd "$work/b" && git init -q . && "$pipe" run small.yaml -q)
echo "(a) $(du -shL "$work/a/.pipe/out/model" | cut -f1) in $(find -L "$work/a/.pipe/out/model" -type f | wc -l) files; (b) $(find -L "$work/b/.pipe/out/small" -type f | wc -l) files"

mkdir -p "$work/dvc/data"
cp -rL "$work/a/.pipe/out/model" "$work/dvc/data/model"
cp -rL "$work/b/.pipe/out/small/files" "$work/dvc/data/small"
chmod -R u+w "$work/dvc/data"
(
  cd "$work/dvc"
  git init -q . && "$dvc" init -q
  "$dvc" remote add -q -d bench s3://dvc/cache
  "$dvc" remote modify -q bench endpointurl "$AWS_ENDPOINT_URL"
  "$dvc" add -q data/model data/small
  git add -A > /dev/null && git -c user.name=b -c user.email=b@b commit -qm data
)

echo "== first push (one round)"
pa=$(cd "$work/a" && secs "$pipe" push model.yaml --remote s3://pipe/a)
pb=$(cd "$work/b" && secs "$pipe" push small.yaml --remote s3://pipe/b)
da=$(cd "$work/dvc" && secs "$dvc" push -q data/model.dvc)
db=$(cd "$work/dvc" && secs "$dvc" push -q data/small.dvc)
echo "push (a): pipe ${pa}s  dvc ${da}s"
echo "push (b): pipe ${pb}s  dvc ${db}s"

echo "== $runs rounds"
declare -a p_a p_a_run d_a p_b p_b_run d_b p_noop d_noop
for r in $(seq 1 "$runs"); do
  for set in a:model b:small; do
    dir=${set%%:*} name=${set#*:}
    c=$work/clone-$dir-$r
    mkdir -p "$c" && (cd "$c" && git init -q .)
    cp "$work/$dir/$name.yaml" "$work/$dir/$name.lock" "$c/"
    [ "$dir" = b ] && cp "$work/b/gen.py" "$c/"
    t=$(cd "$c" && secs "$pipe" pull "$name.yaml" --remote "s3://pipe/$dir")
    t_run=$(cd "$c" && secs "$pipe" run "$name.yaml")
    git clone -q "$work/dvc" "$work/dclone-$dir-$r"
    d=$(cd "$work/dclone-$dir-$r" && secs "$dvc" pull -q "data/$name.dvc")
    if [ "$dir" = a ]; then p_a+=("$t"); p_a_run+=("$t_run"); d_a+=("$d"); else p_b+=("$t"); p_b_run+=("$t_run"); d_b+=("$d"); fi
    rm -rf "$c" "$work/dclone-$dir-$r"
  done
  p_noop+=("$(cd "$work/b" && secs "$pipe" push small.yaml --remote s3://pipe/b)")
  d_noop+=("$(cd "$work/dvc" && secs "$dvc" push -q data/small.dvc)")
  echo "round $r: (a) pipe pull ${p_a[-1]}s (+ run ${p_a_run[-1]}s), dvc pull ${d_a[-1]}s; (b) pipe pull ${p_b[-1]}s (+ run ${p_b_run[-1]}s), dvc pull ${d_b[-1]}s; no-op push (b): pipe ${p_noop[-1]}s, dvc ${d_noop[-1]}s"
done

echo "== medians of $runs, pipe $profile build ($(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores)"
printf '%-34s %10s %10s\n' "" pipe dvc
printf '%-34s %9ss %9ss\n' "pull (a) model outputs" "$(median "${p_a[@]}")" "$(median "${d_a[@]}")"
printf '%-34s %9ss %10s\n' "  then pipe run (links outputs)" "$(median "${p_a_run[@]}")" ""
printf '%-34s %9ss %9ss\n' "pull (b) 20,000 x 1 KB" "$(median "${p_b[@]}")" "$(median "${d_b[@]}")"
printf '%-34s %9ss %10s\n' "  then pipe run (links outputs)" "$(median "${p_b_run[@]}")" ""
printf '%-34s %9ss %9ss\n' "no-op push (b)" "$(median "${p_noop[@]}")" "$(median "${d_noop[@]}")"
