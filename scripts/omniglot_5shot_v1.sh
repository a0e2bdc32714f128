#!/usr/bin/env bash
# The authors' Omniglot 20-way 5-shot run (hypertransformer/tf/scripts/omniglot_5shot_v1.sh):
# the 1-shot script with --samples_transformer=100 --samples_cnn=100.
# Call from the repository root as
#   ./scripts/omniglot_5shot_v1.sh --data_numpy_dir=./data_numpy_dir --train_log_dir=./logs
# or, with the official Omniglot zips instead of a NumPy cache,
#   ./scripts/omniglot_5shot_v1.sh --data_dir=/path/to/omniglot --train_log_dir=./logs
# Further flags override these (the last occurrence of a flag wins).

exec "$(dirname "$0")/omniglot_1shot_v1.sh" --samples_transformer=100 --samples_cnn=100 "$@"
