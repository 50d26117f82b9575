#!/usr/bin/env bash
# The whole EQ-Net pipeline on one spec, chained through the artifacts/ workspace with each
# command's defaults: every stage reads the newest artifact it needs and says which one it used.
#
#   bash scripts/quickstart.sh [--with-baselines] [--force] [SPEC]      (SPEC default: specs/mbv2-quick.json)
#
# The first run is sized to take a few minutes on 2 CPU cores (README, BENCHMARKS.md "quickstart"):
# the report compares the supernet's uniform 2/4/8-bit subnets in two of its forms (REPORT_FORMS)
# and search --verify chooses on the spec's val split. --with-baselines also trains static-QAT
# models of the same epochs at 2/4/8 bits in those two forms, so the report can set the one
# supernet against a model trained for each bit-width alone (about 3 more minutes).
# A second run refuses to start over the first one's artifacts; --force replaces them, stage by stage.
set -euo pipefail
SPEC=specs/mbv2-quick.json
BASELINES=0
FORCE=()
for arg in "$@"; do
  case $arg in
    --with-baselines) BASELINES=1 ;;
    --force) FORCE=(--force) ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "quickstart.sh: unknown option $arg (allowed: --with-baselines, --force, -h)" >&2; exit 2 ;;
    *) SPEC=$arg ;;
  esac
done
if [ ! -f "$SPEC" ]; then
  echo "quickstart.sh: no spec file at $SPEC (the bundled ones are in specs/, e.g. specs/mbv2-quick.json)" >&2; exit 2
fi
WORKSPACE=artifacts/$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["name"])' "$SPEC" 2>/dev/null || true)
if [ ${#FORCE[@]} = 0 ] && [ "$WORKSPACE" != artifacts/ ] && [ -e "$WORKSPACE/supernet" ]; then
  echo "quickstart.sh: $WORKSPACE already holds a run of $SPEC, and this script writes the same artifacts." \
       "See it with 'eqtools report --spec ${WORKSPACE#artifacts/}', or run again with --force to replace" \
       "each artifact as its stage finishes (each one stays whole until its replacement is)." >&2
  exit 2
fi
# two forms a deployment asks for: TensorRT's per-channel symmetric and a DSP's per-tensor asymmetric
REPORT_FORMS=per-channel/sym/sym,per-tensor/asym/asym
export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296  # steadier CPU throughput
start=$SECONDS
step() { printf '\n\033[1m== %s (%ds elapsed)\033[0m\n' "$*" $((SECONDS - start)); }

step "train the supernet on $SPEC"
eqtools train "$SPEC" "${FORCE[@]}"
if [ "$BASELINES" = 1 ]; then
  for form in ${REPORT_FORMS//,/ }; do
    IFS=/ read -r granularity w_sym a_sym <<< "$form"
    for bits in 2 4 8; do
      step "train the static-QAT baseline at $bits bits, $granularity W-$w_sym A-$a_sym (same epochs, for comparison)"
      eqtools train "$SPEC" --static-bits "$bits" --granularity "$granularity" --w-symmetry "$w_sym" --a-symmetry "$a_sym" "${FORCE[@]}"
    done
  done
fi
step "sample subnets: BN calibration + accuracy on held-out training images"
eqtools sample -n 200 "${FORCE[@]}"
step "fit the accuracy predictor"
eqtools fit-predictor --model mlp "${FORCE[@]}"
step "search a 3-bit mixed-precision subnet (per-tensor, asymmetric), verifying the top 5 and the cheap-first mixes on the held-out val split"
eqtools search --w-bits 3 --granularity per-tensor --symmetry asym --top-k 5 --verify --verify-split val "${FORCE[@]}"
step "calibrate the searched subnet and measure it on the test split"
eqtools calibrate --searched "${FORCE[@]}"
step "export it: packed integer weights and ONNX, checked against the fake-quant model"
eqtools export --format all "${FORCE[@]}"
step "report"
eqtools report --forms "$REPORT_FORMS"
printf '\nfinished in %d s\n' $((SECONDS - start))
