#!/usr/bin/env bash
# The measurements of docs/performance.md, "Second round": outputs in benchmarks/round2/.
# Run from the repository root; real Omniglot in ../shared/data/omniglot, miniImageNet
# pickles (e.g. tests/imagenet_fixtures.py::write_mini_pickles(root, per_class=30)) in
# ${MINI:-/tmp/minifix}.
set -euo pipefail
out=benchmarks/round2
omniglot=../shared/data/omniglot
mini=${MINI:-/tmp/minifix}
cd "$(dirname "$0")/.."
{ date -u; lscpu | grep -E "Model name|^CPU\(s\)|L2|L3"
  echo "avx2: $(grep -c -w avx2 /proc/cpuinfo) cpu(s); avx512*/amx*/avx_vnni:" \
      "$(grep -o -w -E 'avx512[a-z_0-9]*|amx[a-z_0-9]*|avx_vnni' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  python -c "import torch; print('torch', torch.__version__)"; uptime; } > $out/machine.txt 2>&1
for i in 1 2; do
    python benchmarks/throughput.py --preset omniglot_1shot --data-dir $omniglot \
        --episodes-per-step 16 --json > $out/omniglot_t16_$i.txt 2>&1
done
python benchmarks/conv_forms.py --rounds 7 > $out/conv_forms_train.txt 2>&1
python benchmarks/conv_forms.py --rounds 7 --inference --images 100 > $out/conv_forms_eval.txt 2>&1
python benchmarks/throughput.py --preset miniimagenet_1shot --data-dir $mini \
    --episodes-per-step 16 --steps 10 --warmup 2 --eval-tasks 64 --json > $out/mini_t16.txt 2>&1
python benchmarks/throughput.py --preset miniimagenet_1shot --data-dir $mini \
    --steps 20 --warmup 3 --eval-tasks 0 --json > $out/mini_t1.txt 2>&1
python benchmarks/dtype_speed.py > $out/dtype_speed.txt 2>&1
uptime >> $out/machine.txt
