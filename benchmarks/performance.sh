#!/bin/bash
# The measurements of docs/performance.md; each command's output goes to
# docs/results/performance/<name>.txt (run from the repository root).
#
#   bash benchmarks/performance.sh [BEFORE_SRC]
#
# BEFORE_SRC: the src/ folder of an older checkout (e.g. a clone at commit 8d89ae0); the
# headline runs are then repeated with that code, interleaved (before, after, before, after).
# Omniglot runs read HT_OMNIGLOT_DIR (default ../shared/data/omniglot).
set -euo pipefail
out=docs/results/performance
mkdir -p "$out"
omniglot=${HT_OMNIGLOT_DIR:-../shared/data/omniglot}
before=${1:-}

bench() {  # bench NAME ARGS...: one throughput.py run, its report and JSON to NAME.txt
    local name=$1; shift
    { echo "\$ python benchmarks/throughput.py --preset omniglot_1shot $* --json"
      python benchmarks/throughput.py --preset omniglot_1shot "$@" --json; } > "$out/$name.txt"
    tail -1 "$out/$name.txt" | cut -c1-160
}

for t in 16 1; do
    evaluation=$([ $t = 16 ] && echo 1024 || echo 0)  # the full evaluation once per pair
    for round in 1 2; do
        if [ -n "$before" ]; then
            PYTHONPATH=$before bench "headline_t${t}_before_$round" --episodes-per-step $t \
                --threads 2 --eval-tasks "$evaluation"
        fi
        bench "headline_t${t}_after_$round" --episodes-per-step $t --threads 2 \
            --eval-tasks "$evaluation"
    done
done
for threads in 1 2; do
    for t in 1 4 16 64; do
        steps=$(( t == 1 ? 40 : t == 4 ? 25 : t == 16 ? 15 : 6 ))
        bench "scaling_threads${threads}_t$t" --episodes-per-step $t --threads $threads \
            --steps $steps --eval-tasks 0
    done
done
bench omniglot_t16 --episodes-per-step 16 --threads 2 --data-dir "$omniglot" --steps 10 \
    --eval-tasks 64
for threads in 1 2; do
    { echo "\$ python benchmarks/profile_step.py --preset omniglot_1shot --threads $threads"
      python benchmarks/profile_step.py --preset omniglot_1shot --threads "$threads"; } \
        > "$out/profile_threads$threads.txt"
done
