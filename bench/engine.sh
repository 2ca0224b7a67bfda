#!/usr/bin/env bash
# Engine benchmark: a fully cached `pipe run` of a 10-stage chain whose first
# stage reads a 1 GB input, side by side with `dvc repro` on the same chain;
# first-time hashing of that 1 GB file against `openssl dgst -sha256`; and a
# one-stage pipeline whose input is a folder of 100,000 small files (395 MB),
# first run and fully cached run, against `dvc repro`.
#
#   bench/engine.sh [RUNS]        (default 20 runs per command; medians printed)
#
# Needs hyperfine (apt-get install hyperfine) and, for the DVC column, DVC in a
# venv: bench/engine.sh installs it into $PIPE_BENCH_VENV (default
# ~/.cache/pipe-bench/dvc) with pip if it is missing.
set -euo pipefail
runs=${1:-20}
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${PIPE_BENCH_VENV:-$HOME/.cache/pipe-bench/dvc}
work=$(mktemp -d "${TMPDIR:-/tmp}/pipe-bench-engine.XXXXXX")
trap 'rm -rf "$work"' EXIT

command -v hyperfine >/dev/null || { echo "bench/engine.sh needs hyperfine" >&2; exit 2; }
if [ ! -x "$venv/bin/dvc" ]; then
  python3 -m venv "$venv" && "$venv/bin/pip" install -q "dvc==3.67.*"
fi
(cd "$root" && cargo build --release -q --bin pipe -p pipe && cargo build --release -q -p pipe-cache --example hash)
pipe=$root/target/release/pipe
hash=$root/target/release/examples/hash

echo "== 1 GB input"
mkdir -p "$work/p/data" "$work/d/data"
head -c 1000000000 /dev/urandom > "$work/p/data/big.bin"
cp "$work/p/data/big.bin" "$work/d/data/big.bin"

# The same 10-stage chain for both tools.
{
  printf 'version: 1\nname: chain\nstages:\n'
  printf '  s1:\n    kind: shell\n    inputs: {data: data/big.bin}\n    with: {cmd: "head -c 4096 $PIPE_IN_DATA | sha256sum > $PIPE_OUT/h"}\n'
  for i in $(seq 2 10); do
    printf '  s%d:\n    kind: shell\n    inputs: {prev: "s%d:h"}\n    with: {cmd: "sha256sum < $PIPE_IN_PREV > $PIPE_OUT/h"}\n' "$i" $((i - 1))
  done
} > "$work/p/pipe.yaml"
{
  printf 'stages:\n'
  printf '  s1:\n    cmd: head -c 4096 data/big.bin | sha256sum > h1\n    deps: [data/big.bin]\n    outs: [h1]\n'
  for i in $(seq 2 10); do
    printf '  s%d:\n    cmd: sha256sum < h%d > h%d\n    deps: [h%d]\n    outs: [h%d]\n' "$i" $((i - 1)) "$i" $((i - 1)) "$i"
  done
} > "$work/d/dvc.yaml"
(cd "$work/d" && git init -q && "$venv/bin/dvc" init -q && "$venv/bin/dvc" config core.analytics false && "$venv/bin/dvc" repro -q >/dev/null)
(cd "$work/p" && "$pipe" run -q pipe.yaml)
# Let the stat caches of both tools see the input as settled (not racily clean).
sleep 3
(cd "$work/p" && "$pipe" run -q pipe.yaml)
(cd "$work/d" && "$venv/bin/dvc" repro -q >/dev/null)

echo "== fully cached run, 10 stages (median of $runs)"
hyperfine -N -w 3 -r "$runs" --export-json "$work/noop.json" \
  -n "pipe run" "$pipe run -q $work/p/pipe.yaml" \
  -n "dvc repro" "bash -c 'cd $work/d && $venv/bin/dvc repro -q'" >/dev/null
medians() { # JSON
  python3 - "$1" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    print(f"{r['command']:>10}: median {r['median']*1000:8.1f} ms  (min {r['min']*1000:.1f}, max {r['max']*1000:.1f})")
PY
}
medians "$work/noop.json"

echo "== hashing the 1 GB file, page cache warm (median of 5)"
cat "$work/p/data/big.bin" > /dev/null
hyperfine -N -w 1 -r 5 --export-json "$work/hash.json" \
  -n "pipe (sha2)" "$hash $work/p/data/big.bin" \
  -n "openssl dgst -sha256" "openssl dgst -sha256 $work/p/data/big.bin" >/dev/null
python3 - "$work/hash.json" <<'PY'
import json, sys
res = json.load(open(sys.argv[1]))["results"]
for r in res:
    print(f"{r['command']:>22}: median {r['median']:.3f} s  {1.0 / r['median']:.2f} GB/s")
print(f"pipe / openssl throughput: {res[1]['median'] / res[0]['median'] * 100:.0f}%")
PY

echo "== 100,000 files of 3950 bytes in 100 folders (395 MB)"
rm -rf "$work/p" "$work/d"
mkdir -p "$work/f/p" "$work/f/d"
python3 - "$work/f/p/files" <<'PY'
import os, sys
for i in range(100):
    d = os.path.join(sys.argv[1], f"d{i:03d}")
    os.makedirs(d)
    for j in range(1000):
        with open(os.path.join(d, f"f{j:04d}.txt"), "wb") as f:
            f.write(os.urandom(3950))
PY
cp -r "$work/f/p/files" "$work/f/d/files"
printf 'version: 1\nname: files\nstages:\n  count:\n    kind: shell\n    inputs: {files: files}\n    with: {cmd: "ls $PIPE_IN_FILES | wc -l > $PIPE_OUT/n"}\n' > "$work/f/p/pipe.yaml"
printf 'stages:\n  count:\n    cmd: ls files | wc -l > n\n    deps: [files]\n    outs: [n]\n' > "$work/f/d/dvc.yaml"
(cd "$work/f/d" && git init -q && "$venv/bin/dvc" init -q && "$venv/bin/dvc" config core.analytics false)
sync
TIMEFORMAT='%R s'
echo "first run (hashes every file):"
printf '  pipe run:  '; time (cd "$work/f/p" && "$pipe" run -q pipe.yaml)
printf '  dvc repro: '; time (cd "$work/f/d" && "$venv/bin/dvc" repro -q >/dev/null)
sleep 3
(cd "$work/f/p" && "$pipe" run -q pipe.yaml)
(cd "$work/f/d" && "$venv/bin/dvc" repro -q >/dev/null)
echo "== fully cached run, 100,000-file input (median of $runs)"
hyperfine -N -w 3 -r "$runs" --export-json "$work/files.json" \
  -n "pipe run" "$pipe run -q $work/f/p/pipe.yaml" \
  -n "dvc repro" "bash -c 'cd $work/f/d && $venv/bin/dvc repro -q'" >/dev/null
medians "$work/files.json"
