#!/usr/bin/env bash
# What running a stage through Slurm costs: a trivial shell stage and the
# tiny-model fine-tune, `pipe run --force-all` with the local executor and with
# `--executor slurm` in turn, on a one-node Slurm cluster started on this
# machine (tests/common/slurm.rs), medians printed.
#
#   bench/slurm.sh [ROUNDS]       (default 10 rounds of the trivial stage; 3 of the fine-tune)
#
# Needs Debian's slurm-wlm and munge (scripts/setup-test-tools) and libtorch
# (scripts/setup-libtorch).
set -euo pipefail
cd "$(dirname "$0")/.."
PIPE_BENCH_ROUNDS=${1:-10} cargo test -q --workspace --test slurm bench_slurm_overhead -- --ignored --nocapture 2>&1 |
  grep -E 'overhead|panicked|error'
