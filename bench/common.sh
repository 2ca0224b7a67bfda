# Shared set-up of the ML benchmarks (bench/finetune.sh, bench/serve.sh); source it.
#
# Needs PIPE_REF_BENCH (the folder of the reference scripts) and PIPE_REF_PYTHON
# (a python with torch 2.11 and transformers). Sets root, ref, py, work (a
# scratch workspace, the current directory afterwards, removed on exit)
# and pipe; installs libtorch and builds the release binaries; writes
# bench.yaml with the stages every benchmark starts from, followed by the
# caller's (standard input), with the CoLA zip kept whole for the reference.
bench_setup() { # NAME
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  ref=${PIPE_REF_BENCH:?set PIPE_REF_BENCH to the folder of the reference scripts}
  py=${PIPE_REF_PYTHON:?set PIPE_REF_PYTHON to the reference python}
  work=$(mktemp -d "${TMPDIR:-/tmp}/pipe-bench-$1.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  "$root/scripts/setup-libtorch"
  (cd "$root" && cargo build --release -q --workspace --bins --examples)
  pipe=$root/target/release/pipe
  cd "$work"
  git init -q .
  {
    cat <<'YAML'
version: 1
name: bench
stages:
  cola:
    kind: download
    with: {url: "https://nyu-mll.github.io/CoLA/cola_public_1.1.zip", extract: none}
  data:
    kind: download
    with: {url: "https://nyu-mll.github.io/CoLA/cola_public_1.1.zip", extract: zip}
  split:
    kind: split
    inputs: {data: "data:cola_public/raw/in_domain_train.tsv"}
    with: {format: tsv, header: false, text_column: 3, label_column: 1, test_fraction: 0.25, seed: 42}
  bert:
    kind: download
    with: {hf: sentence-transformers/all-MiniLM-L6-v2, files: [config.json, model.safetensors, tokenizer.json, tokenizer_config.json, special_tokens_map.json, vocab.txt]}
YAML
    cat
  } > bench.yaml
  zip=$work/.pipe/out/bench/cola/cola_public_1.1.zip
}
