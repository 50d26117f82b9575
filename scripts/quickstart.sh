#!/usr/bin/env bash
# The whole EQ-Net pipeline on one spec, chained through the artifacts/ workspace with each
# command's defaults: every stage reads the newest artifact it needs and says which one it used.
#
#   bash scripts/quickstart.sh [SPEC]        (default: specs/quick.json; BENCHMARKS.md has its measured duration)
set -euo pipefail
SPEC=${1:-specs/quick.json}
export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296  # steadier CPU throughput
start=$SECONDS
step() { printf '\n\033[1m== %s (%ds elapsed)\033[0m\n' "$*" $((SECONDS - start)); }

step "train the supernet"
eqtools train "$SPEC"
for a_sym in sym asym; do
  for bits in 2 4 8; do
    step "train the static-QAT baseline at $bits bits, per-channel W-sym A-$a_sym (same epochs, for comparison)"
    eqtools train "$SPEC" --static-bits "$bits" --granularity per-channel --w-symmetry sym --a-symmetry "$a_sym"
  done
done
step "sample subnets: BN calibration + accuracy on held-out training images"
eqtools sample -n 200
step "fit the accuracy predictor"
eqtools fit-predictor --model mlp
step "search a 3-bit mixed-precision subnet (per-tensor, asymmetric), verifying the top 5 on held-out images"
eqtools search --w-bits 3 --granularity per-tensor --symmetry asym --top-k 5 --verify
step "calibrate the searched subnet and measure it on the test split"
eqtools calibrate --searched
step "export it: packed integer weights and ONNX, checked against the fake-quant model"
eqtools export --format all
step "report"
eqtools report
printf '\nfinished in %d s\n' $((SECONDS - start))
