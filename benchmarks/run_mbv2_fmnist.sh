#!/usr/bin/env bash
# The measurements of a MobileNetV2 recipe after its supernet is trained (`eqtools train
# specs/$SPEC.json`): specs/mbv2-fmnist.json (decision 0500) by default, SPEC=mbv2-025-fmnist for the
# quarter-width one (decision 0503). Each stage writes benchmarks/results/<prefix>-*.json, the prefix being
# the spec's name less "-fmnist" (mbv2-*, mbv2-025-*); the benchmark caches under artifacts/$SPEC/ make a
# rerun skip what is measured.
#
#   [SPEC=mbv2-025-fmnist] [TOP_K=5 VERIFY_IMAGES=10000] bash benchmarks/run_mbv2_fmnist.sh [STAGE ...]
#   stages (in this order by default): sample heldout predictor search search4 headroom static forms
#   TOP_K and VERIFY_IMAGES are the search stage's --verify settings (default 3 and 2000; search4 always
#   verifies the 4-bit budgets again with 5 and 10000).
#
# Two single-thread processes at a time, one per core: on two cores, two processes of two threads each run
# many times slower than one after the other (their threads wait on each other at every barrier).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
SPEC=${SPEC:-mbv2-fmnist}
W=artifacts/$SPEC
R=${SPEC%-fmnist}  # the results' prefix
SN=${SN:-$W/supernet}
TOP_K=${TOP_K:-3}
VERIFY_IMAGES=${VERIFY_IMAGES:-2000}
VARIANT=${VARIANT:-ensemble-loss}  # the best-ranked variant of the predictor stage (mbv2-predictor)
PY=${PY:-python}
FORMS=(per-channel/sym/sym,per-channel/sym/asym,per-channel/asym/sym,per-channel/asym/asym
       per-tensor/sym/sym,per-tensor/sym/asym,per-tensor/asym/sym,per-tensor/asym/asym)
stages=${*:-sample heldout predictor search search4 headroom static forms}
for stage in $stages; do
  case $stage in
    sample)  # the predictor's training pool (the sampler's protocol), then the layer sensitivity
      for k in 1 2; do
        $PY benchmarks/bench_predictor.py build "$SN" --set pool -n 400 --no-compile --shard $k/2 &
      done
      wait
      $PY benchmarks/bench_layer_sensitivity.py "$SN" --forms per-tensor/sym/sym,per-channel/sym/sym \
        --out $W/sensitivity.json --result $R-sensitivity ;;
    heldout)  # held-out subnets measured on the 10k test images
      for k in 1 2; do
        $PY benchmarks/bench_predictor.py build "$SN" --set heldout --heldout-n 64 --uniform-bits 3,4 --no-compile --shard $k/2 &
      done
      wait ;;
    predictor)
      $PY benchmarks/bench_predictor.py evaluate "$SN" \
        --variants mlp,xgb,ensemble,ensemble-loss,ensemble-costs-rank-loss \
        --curve-variant "$VARIANT" --curve-n 100,200,400 --curve-images 1000 --result $R-predictor ;;
    search)  # two processes of four forms fill the measurement cache; the run over all forms writes the result
      for f in "${FORMS[@]}"; do
        $PY benchmarks/bench_predictor.py search "$SN" --variant "$VARIANT" --forms "$f" --bits 3,4 --size-of-uniform 4 \
          --top-k $TOP_K --verify-images $VERIFY_IMAGES > "$W/search-${f%%/*}.log" 2>&1 &
      done
      wait
      $PY benchmarks/bench_predictor.py search "$SN" --variant "$VARIANT" --forms all --bits 3,4 --size-of-uniform 4 \
        --top-k $TOP_K --verify-images $VERIFY_IMAGES --save-picks $W/picks --result $R-search ;;
    search4)  # the 4-bit and uniform-W4-size budgets again, --verify on 10k unseen images and the top 5
      for f in "${FORMS[@]}"; do
        $PY benchmarks/bench_predictor.py search "$SN" --variant "$VARIANT" --forms "$f" --bits 4 --size-of-uniform 4 \
          --top-k 5 --verify-images 10000 > "$W/search4-${f%%/*}.log" 2>&1 &
      done
      wait
      $PY benchmarks/bench_predictor.py search "$SN" --variant "$VARIANT" --forms all --bits 4 --size-of-uniform 4 \
        --top-k 5 --verify-images 10000 --result $R-search-4bit-verify10k ;;
    headroom)  # the room between uniform W4A4 and W8A8 per form, and how much of it budget-exact mixes take
      found=$R-search-4bit-verify10k  # the 4/4 picks beside the room: search4's, else the search stage's
      [[ -f benchmarks/results/$found.json ]] || found=$R-search
      $PY benchmarks/bench_headroom.py "$SN" --search-result $found --result $R-headroom ;;
    static)  # static-QAT W4A4 baselines in all 8 forms, from the same cached float warm-up, two at a time
      n=0
      for g in per-channel per-tensor; do for ws in sym asym; do for as in sym asym; do
        $PY -m eqtools train specs/$SPEC.json --static-bits 4 --granularity $g --w-symmetry $ws \
          --a-symmetry $as > "$W/static-4-$g-$ws-$as.log" 2>&1 &
        n=$((n + 1)); if (( n % 2 == 0 )); then wait; fi
      done; done; done
      wait ;;
    forms)
      EQTOOLS_THREADS=1 $PY benchmarks/bench_forms.py --spec specs/$SPEC.json --work $W --bits 2,3,4,8 \
        --static $W/supernet-static-* --result $R-forms ;;
    *) echo "unknown stage $stage (stages: sample heldout predictor search search4 headroom static forms)" >&2; exit 2 ;;
  esac
done
