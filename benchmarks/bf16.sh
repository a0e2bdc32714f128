#!/usr/bin/env bash
# The measurements of docs/performance.md, "Native bf16, chosen per machine (issue 26)":
# outputs in docs/results/bf16/. Run from anywhere on an otherwise idle machine (~65 minutes:
# two 20-minute training runs, then the benchmarks); real Omniglot in ../shared/data/omniglot.
# BEFORE_SRC (optional): the src/ of a clone at the commit before issue 26 (2b5531c), for the
# interleaved fp32 before/after runs.
set -uo pipefail
cd "$(dirname "$0")/.."
out=docs/results/bf16
omniglot=../shared/data/omniglot
before=${1:-}
mkdir -p $out/parity runs
{ lscpu; python -c "import torch; print('torch', torch.__version__)"; } > $out/machine.txt
hypertransformer data info omniglot --data-dir $omniglot > /dev/null  # builds the cache once

# accuracy parity: a 20-minute omniglot_1shot_cpu run per dtype, each checkpoint in both
for d in fp32 bf16; do
    rm -rf runs/parity_$d
    /usr/bin/time -v timeout -s INT 1200 hypertransformer train --preset omniglot_1shot_cpu \
        --data-dir $omniglot --log-dir runs/parity_$d --no-progress --dtype $d \
        > $out/parity/train_$d.log 2>&1
    cp runs/parity_$d/metrics.jsonl $out/parity/train_${d}_metrics.jsonl
    cp runs/parity_$d/config.json $out/parity/train_${d}_config.json
done
for run in fp32 bf16; do
    for d in fp32 bf16; do
        /usr/bin/time -v hypertransformer evaluate --log-dir runs/parity_$run --split test \
            --data-dir $omniglot --dtype $d --json > $out/parity/eval_${run}_run_in_$d.txt 2>&1
    done
done
ckpt=$(ls runs/parity_fp32/checkpoints/ckpt-*.pt | tail -1)
for d in auto fp32 bf16; do
    echo "# hypertransformer evaluate --checkpoint $ckpt --split test --data-dir $omniglot --dtype $d --json"
    /usr/bin/time -f "%e s wall, %R minor page faults, max RSS %M KB" hypertransformer evaluate \
        --checkpoint "$ckpt" --split test --data-dir $omniglot --dtype $d --json 2>&1 | tail -2
done > $out/eval_after_memory_fix.txt

# speed
python benchmarks/dtype_speed.py > $out/dtype_speed.txt 2>&1
python benchmarks/dtype_agreement.py --data-dir $omniglot > $out/dtype_agreement.txt 2>&1
for i in 1 2; do
    python benchmarks/throughput.py --preset omniglot_1shot --data-dir $omniglot \
        --episodes-per-step 16 --json > $out/throughput_t16_$i.txt 2>&1
done
profile="python benchmarks/profile_step.py --preset omniglot_1shot --data-dir $omniglot --threads 1"
for d in fp32 bf16; do
    $profile --dtype $d 2>&1 | grep -v USDT > $out/profile_step_$d.txt
    $profile --dtype $d --eval-tasks 64 --rows 25 2>&1 | grep -v USDT > $out/profile_eval_$d.txt
done
$profile --dtype bf16 --bf16-transformer 2>&1 | grep -v USDT \
    > $out/profile_step_bf16_transformer_bf16.txt
if [ -n "$before" ]; then  # no regression in fp32: before and after, interleaved
    for i in 1 2; do
        PYTHONPATH=$before python $before/../benchmarks/throughput.py --preset omniglot_1shot \
            --data-dir $omniglot --episodes-per-step 16 --eval-tasks 0 --json \
            > $out/before_fp32_t16_$i.txt 2>&1
        python benchmarks/throughput.py --preset omniglot_1shot --data-dir $omniglot \
            --episodes-per-step 16 --eval-tasks 0 --json > $out/after_t16_$i.txt 2>&1
    done
fi
