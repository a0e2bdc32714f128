#!/usr/bin/env bash
# Tuning the demo's recipe (issue 13 item 6) on the glyphs VALIDATION classes: each candidate
# trains the glyphs_demo preset with its overrides for 3 minutes of wall clock (start-up
# included, as the demo), then its last checkpoint is evaluated on glyphs:val (256 tasks x 4
# batches x 100, the demo's protocol).  Run from the repo root on an otherwise idle machine:
#   bash benchmarks/demo_recipe/tune.sh [NAME ...]   (default: every candidate below)
# Output: benchmarks/demo_recipe/<name>.txt (the val record's line), logs under runs/demo_tune/.
set -u
declare -A CANDIDATES=(
  [baseline]=""
  [lr2e-3]="--set learning_rate=0.002"
  [no_rot90]="--set per_label_augmentation=false --set random_rotate_by_90=false"
  [t16_lr2e-3]="--episodes-per-step 16 --set learning_rate=0.002"
  [logits_only]="--set number_of_trained_cnn_layers=4"
  [logits_only_no_rot90]="--set number_of_trained_cnn_layers=4 --set per_label_augmentation=false --set random_rotate_by_90=false"
)
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(baseline lr2e-3 no_rot90 t16_lr2e-3 logits_only logits_only_no_rot90)
out=benchmarks/demo_recipe
for name in "${names[@]}"; do
  [ -v "CANDIDATES[$name]" ] || { echo "unknown candidate $name" >&2; exit 2; }
  log=runs/demo_tune/$name
  rm -rf "$log"
  # shellcheck disable=SC2086
  timeout -s INT 180 hypertransformer train --preset glyphs_demo --log-dir "$log" \
      --steps 1000000 --no-progress --log-every 100 ${CANDIDATES[$name]} > "$log.train.log" 2>&1
  hypertransformer evaluate --log-dir "$log" --split val --tasks 256 --batches 4 \
      | sed -n 1p | sed "s|^|$name (${CANDIDATES[$name]}): |" | tee "$out/$name.txt"
done
