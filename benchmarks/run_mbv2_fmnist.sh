#!/usr/bin/env bash
# The measurements of specs/mbv2-fmnist.json after its supernet is trained (`eqtools train
# specs/mbv2-fmnist.json`, plus the static-QAT baselines `--static-bits 4 --granularity per-channel
# --symmetry sym` and `--static-bits 4 --granularity per-tensor --symmetry asym`). Sized for two
# CPU cores shared with four other jobs (docs/decisions/0500-mbv2-fmnist.md). Each stage writes benchmarks/results/mbv2-*.json; the
# benchmark caches under artifacts/bench-predictor/ make a rerun skip what is measured.
#
#   bash benchmarks/run_mbv2_fmnist.sh [STAGE ...]     stages: sample sensitivity predictor search forms
#
# Two processes at a time (one torch thread each, or one with two): the machine is shared.
set -euo pipefail
cd "$(dirname "$0")/.."
SN=${SN:-artifacts/mbv2-fmnist/supernet}
VARIANT=${VARIANT:-ensemble-costs-rank-loss}
PY=${PY:-python}
stages=${*:-sample sensitivity predictor search forms}
for stage in $stages; do
  case $stage in
    sample)  # the training pool (the sampler's protocol) and the held-out set (10k test images a subnet)
      $PY benchmarks/bench_predictor.py build "$SN" --set pool -n 300 --no-compile --shard 1/2 &
      $PY benchmarks/bench_predictor.py build "$SN" --set pool -n 300 --no-compile --shard 2/2 &
      wait
      $PY benchmarks/bench_predictor.py build "$SN" --set heldout --heldout-n 24 --uniform-bits 3,4 --no-compile --shard 1/2 &
      $PY benchmarks/bench_predictor.py build "$SN" --set heldout --heldout-n 24 --uniform-bits 3,4 --no-compile --shard 2/2 &
      wait ;;
    sensitivity)
      $PY benchmarks/bench_layer_sensitivity.py "$SN" --forms per-channel/sym/sym,per-tensor/sym/sym \
        --threads 2 --out artifacts/mbv2-fmnist/sensitivity.json --result mbv2-sensitivity ;;
    predictor)
      $PY benchmarks/bench_predictor.py evaluate "$SN" --threads 2 \
        --variants mlp,xgb,ensemble,ensemble-loss,ensemble-costs-rank-loss \
        --curve-variant ensemble-costs-rank-loss --curve-n 100,300 --curve-images 1000 --result mbv2-predictor ;;
    search)
      $PY benchmarks/bench_predictor.py search "$SN" --variant "$VARIANT" --forms all --bits 3,4 --size-of-uniform 4 \
        --top-k 3 --verify-images 2000 --threads 2 --save-picks artifacts/mbv2-fmnist/picks --result mbv2-search ;;
    forms)
      $PY benchmarks/bench_forms.py --spec specs/mbv2-fmnist.json --work artifacts/mbv2-fmnist --bits 2,4,8 \
        --static artifacts/mbv2-fmnist/supernet-static-* --result mbv2-forms ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
