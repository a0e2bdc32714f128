#!/usr/bin/env bash
# The authors' tieredImageNet 5-way 1-shot run (hypertransformer/tf/scripts/tieredimagenet_1shot_v1.sh),
# plus our --image_channels=3 (the input channels of the CNN: colour images).
# Call from the repository root as
#   ./scripts/tieredimagenet_1shot_v1.sh --data_dir=/path/to/tieredimagenet --train_log_dir=./logs
# where the folder holds {train,val,test}_images.npz or Ren et al.'s {train,val,test}_images_png.pkl,
# each with {split}_labels.pkl (docs/data.md; `hypertransformer data prepare tieredimagenet --from D`
# decodes it ahead of the run). Evaluate beside it with the same flags:
#   python -m hypertransformer.evaluate --data_dir=... --train_log_dir=./logs
# Further flags override the ones below (the last occurrence of a flag wins). $PYTHON picks
# the interpreter (default: python).

exec "${PYTHON:-python}" -m hypertransformer.train \
  --num_layerwise_features=8 --default_num_channels=8 \
  --samples_transformer=5 --samples_cnn=100 --num_labels=5 --learning_rate=0.01 \
  --learning_rate_decay_steps=100000.0 --learning_rate_decay_rate=0.95 \
  --train_steps=4000000 --steps_between_saves=50000 --lw_key_query_dim=0.5 \
  --lw_value_dim=0.5 --lw_inner_dim=0.5 --cnn_model_name='maxpool-4-layer' \
  --embedding_dim=32 --num_layers=3 --stride=1 --heads=8 \
  --shared_feature_extractor='4-layer' --shared_features_dim=16 \
  --shared_feature_extractor_padding=same --layerwise_generator=joint \
  --nolw_use_nonlinear_feature --lw_weight_allocation=output --nolw_generate_bias \
  --nolw_generate_bn --nouse_decoder --noadd_trainable_weights --image_size=84 \
  --image_channels=3 --balanced_batches --transformer_nonlinearity=lrelu \
  --cnn_activation=lrelu --apply_image_augmentations --noper_label_augmentation \
  --norandom_rotate_by_90 --rotation_probability=0.0 --boundary_probability=0.0 \
  --smooth_probability=0.0 --contrast_probability=0.0 --resize_probability=0.0 \
  --negate_probability=0.0 --roll_probability=0.0 --train_dataset='tieredimagenet:0-350' \
  --test_dataset='tieredimagenet:448-607' --eval_datasets='tieredimagenet' \
  --num_task_evals=1024 --num_eval_batches=16 --eval_batch_size=100 \
  --shuffle_labels_seed=0 "$@"
