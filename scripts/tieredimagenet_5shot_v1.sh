#!/usr/bin/env bash
# The authors' tieredImageNet 5-way 5-shot run (hypertransformer/tf/scripts/tieredimagenet_5shot_v1.sh):
# the 1-shot script with --samples_transformer=25.
# Call from the repository root as
#   ./scripts/tieredimagenet_5shot_v1.sh --data_dir=/path/to/tieredimagenet --train_log_dir=./logs
# (docs/data.md says what the folder holds). Further flags override these (the last occurrence
# of a flag wins).

exec "$(dirname "$0")/tieredimagenet_1shot_v1.sh" --samples_transformer=25 "$@"
