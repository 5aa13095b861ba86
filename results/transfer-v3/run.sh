#!/usr/bin/env bash
# The reports behind the README's transfer tables (issue 13). Run from the repository root. The victims are the
# shipped ones (rebuilt with the trigger stamped after the flip); the sweep victims are made here first.
# Measured with the victim files given by path (a folder outside the repository), byte-identical to the shipped ones.
set -euo pipefail
T="--sampler ddpm --k-defence 20"
for v in finetuned-badnets finetuned-blended scratch-badnets scratch-blended; do
  python -m pdiff transfer --bundle checkpoints/fmnist-convnet/bundle --victim $v --n 200 --seeds 0 1 2 $T \
    --json results/transfer-v3/shallow-$v.json
done
# the stitch with its uniform shrink chosen on the clean budget (--stitch-shrink auto); the stitch methods only
S="--methods stitch+generated,stitch+clean-layers --stitch-shrink auto --n 200 --seeds 0 1 2 --sampler ddpm"
for v in finetuned-badnets finetuned-blended scratch-badnets scratch-blended; do
  python -m pdiff transfer --bundle checkpoints/fmnist-convnet/bundle --victim $v $S --json results/transfer-v3/shrink-shallow-$v.json
done
# tried and dropped: the stitch refined by 5 epochs of cross-entropy (scratch blended: DER 0.806 against 0.863 without)
python -m pdiff transfer --bundle checkpoints/fmnist-convnet/bundle --victim scratch-blended --methods stitch+generated,stitch+clean-layers \
  --stitch-epochs 5 --n 50 --seeds 0 --sampler ddpm --json results/transfer-v3/try-stitch-ce5-scratch-blended.json
# ft and fp at BackdoorBench's 100 epochs (one seed)
python -m pdiff transfer --bundle checkpoints/fmnist-convnet/bundle --victim scratch-badnets --methods ft,fp --defence-epochs 100 \
  --seeds 0 --json results/transfer-v3/epochs100-shallow-scratch-badnets.json
# poisoning-rate sweep (1 % and 5 %; the 10 % victims are the shipped ones): one seed, N = 50
d=$(mktemp -d); cp checkpoints/fmnist-convnet/{base.safetensors,manifest.json} "$d"
for r in 1 5; do
  python -m pdiff collect --out "$d" --trigger badnets --victim-kind finetuned --poison-rate 0.0$r --seed 2
  python -m pdiff collect --out "$d" --trigger badnets --poison-rate 0.0$r --seed 1
  for k in finetuned scratch; do
    python -m pdiff transfer --bundle checkpoints/fmnist-convnet/bundle --victim "$d/victim-$k-badnets-${r}pct.safetensors" \
      --n 50 --seeds 0 $T --json results/transfer-v3/sweep-$k-badnets-${r}pct.json
  done
done
