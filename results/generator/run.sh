#!/usr/bin/env bash
# The reports behind docs/memorisation.md's generator table: the shipped default bundle sampled unconditionally
# (--condition none), N = 200, clean target. Run from the repository root; one thread, about a minute a report on a
# quiet machine. Seed 0 is results/conditions/acc-none-seed0.json, made by the same command in results/conditions/run.sh.
set -euo pipefail
export OMP_NUM_THREADS=1 TQDM_DISABLE=1
B=checkpoints/fmnist-convnet/bundle
for seed in 1 2; do
  python -m pdiff evaluate --bundle $B --target clean --n 200 --seed $seed --sampler ddpm --condition none \
    --curves --no-tsne --json results/generator/none-seed$seed.json
done
python -m pdiff evaluate --bundle $B --target clean --n 200 --seed 0 --sampler ddim --steps 50 --condition none \
  --no-tsne --json results/generator/none-ddim50-seed0.json
python results/generator/table.py --write
