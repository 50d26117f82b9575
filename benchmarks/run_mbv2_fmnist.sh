#!/usr/bin/env bash
# The measurements of specs/mbv2-fmnist.json after its supernet is trained (`eqtools train
# specs/mbv2-fmnist.json`, plus the static-QAT baselines `--static-bits 4 --granularity per-channel
# --symmetry sym` and `--static-bits 4 --granularity per-tensor --symmetry asym`). Sized for two
# CPU cores shared with four other jobs (docs/decisions/0500-mbv2-fmnist.md). Each stage writes benchmarks/results/mbv2-*.json; the
# benchmark caches under artifacts/bench-predictor/ make a rerun skip what is measured.
#
#   bash benchmarks/run_mbv2_fmnist.sh [STAGE ...]     stages: sample search search4 heldout predictor forms
#
# Single-thread processes, three or four at a time, at the caller's nice level: the machine is shared.
set -euo pipefail
cd "$(dirname "$0")/.."
SN=${SN:-artifacts/mbv2-fmnist/supernet}
VARIANT=${VARIANT:-ensemble-costs-rank-loss}
PY=${PY:-python}
stages=${*:-sample search heldout predictor forms}
for stage in $stages; do
  case $stage in
    sample)  # the training pool (the sampler's protocol, 3 processes) beside the layer sensitivity
      for k in 1 2 3; do
        $PY benchmarks/bench_predictor.py build "$SN" --set pool -n 240 --no-compile --shard $k/3 &
      done
      $PY benchmarks/bench_layer_sensitivity.py "$SN" --forms per-tensor/sym/sym,per-channel/sym/sym \
        --out artifacts/mbv2-fmnist/sensitivity.json --result mbv2-sensitivity &
      wait ;;
    search)  # 4 processes of 2 forms each fill the measurement cache; the run over all forms writes the result
      forms=(per-channel/sym/sym,per-channel/sym/asym per-channel/asym/sym,per-channel/asym/asym
             per-tensor/sym/sym,per-tensor/sym/asym per-tensor/asym/sym,per-tensor/asym/asym)
      for f in "${forms[@]}"; do
        $PY benchmarks/bench_predictor.py search "$SN" --variant "$VARIANT" --forms "$f" --bits 3,4 --size-of-uniform 4 \
          --top-k 3 --verify-images 2000 > "artifacts/mbv2-fmnist/search-${f//\//_}.log" 2>&1 &
      done
      wait
      $PY benchmarks/bench_predictor.py search "$SN" --variant "$VARIANT" --forms all --bits 3,4 --size-of-uniform 4 \
        --top-k 3 --verify-images 2000 --save-picks artifacts/mbv2-fmnist/picks --result mbv2-search ;;
    search4)  # the 4-bit and uniform-W4-size budgets again, --verify on 10k unseen images and the top 5
      forms=(per-channel/sym/sym,per-channel/sym/asym per-channel/asym/sym,per-channel/asym/asym
             per-tensor/sym/sym,per-tensor/sym/asym per-tensor/asym/sym,per-tensor/asym/asym)
      for f in "${forms[@]}"; do
        $PY benchmarks/bench_predictor.py search "$SN" --variant "$VARIANT" --forms "$f" --bits 4 --size-of-uniform 4 \
          --top-k 5 --verify-images 10000 > "artifacts/mbv2-fmnist/search4-${f//\//_}.log" 2>&1 &
      done
      wait
      $PY benchmarks/bench_predictor.py search "$SN" --variant "$VARIANT" --forms all --bits 4 --size-of-uniform 4 \
        --top-k 5 --verify-images 10000 --result mbv2-search-4bit-verify10k ;;
    heldout)  # held-out subnets on the 10k test images (3 processes), then the predictor variants against them
      for k in 1 2 3; do
        $PY benchmarks/bench_predictor.py build "$SN" --set heldout --heldout-n 24 --uniform-bits 3,4 --no-compile --shard $k/3 &
      done
      wait ;;
    predictor)
      $PY benchmarks/bench_predictor.py evaluate "$SN" \
        --variants mlp,xgb,ensemble,ensemble-loss,ensemble-costs-rank-loss \
        --curve-variant ensemble-costs-rank-loss --curve-n 100,240 --curve-images 1000 --result mbv2-predictor ;;
    forms)
      $PY benchmarks/bench_forms.py --spec specs/mbv2-fmnist.json --work artifacts/mbv2-fmnist --bits 4 \
        --static artifacts/mbv2-fmnist/supernet-static-* --result mbv2-forms ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
