#!/usr/bin/env bash
# Stitching trials (issue 13, item 3): one seed, N = 20, DDIM-50, clean budget 5 % (3,000 images). Run from the
# repository root. The deep bundle here is the older format-1 one (it ships no scratch-blended victim).
set -euo pipefail
m=generated,originals,stitch+generated,stitch+clean-layers
for v in victim scratch-blended; do
  python -m pdiff transfer --bundle checkpoints/fmnist-convnet/bundle --victim $v --methods $m --n 20 --seeds 0 \
    --sampler ddim --json results/stitch/default-$v.json | tee results/stitch/default-$v.txt
done
python -m pdiff transfer --bundle checkpoints/fmnist-convnet-deep/bundle --victim victim \
  --methods generated,stitch+generated,stitch+clean-layers --n 20 --seeds 0 --sampler ddim \
  --json results/stitch/deep-victim.json | tee results/stitch/deep-victim.txt
# the stitch refined by 3 epochs of cross-entropy through the base's frozen tail
python -m pdiff transfer --bundle checkpoints/fmnist-convnet-deep/bundle --victim victim \
  --methods stitch+generated,stitch+clean-layers --stitch-epochs 3 --n 20 --seeds 0 --sampler ddim \
  --json results/stitch/deep-victim-ce3.json | tee results/stitch/deep-victim-ce3.txt
# leave-one-trunk-out on a trunk trained from another initialisation, reached through the stitch: a small run
# (6,000 training images, K = 40, a briefly trained bundle; the stitch on 5 % = 300 images) -> loto-scratch-small.*
d=$(mktemp -d)/scratch
python -m pdiff collect --out $d --trunks 2 --trunk-mode scratch --from-base checkpoints/fmnist-convnet/base.safetensors \
  --k 40 --train-subset 6000 --seed 0
python -m pdiff train --collection $d --hold-out-trunk 1 --out $d/bundle --ae-steps 400 --ddpm-steps 800 \
  --train-subset 6000 --no-recon-eval --seed 0
python -m pdiff loto --bundle $d/bundle --collection $d --n 20 --sampler ddim --stitch --train-subset 6000 \
  --json results/stitch/loto-scratch-small.json | tee results/stitch/loto-scratch-small.txt
