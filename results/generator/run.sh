#!/usr/bin/env bash
# The reports behind the README's generator table (issue 12). Run from the repository root.
set -euo pipefail
for seed in 0 1 2; do
  python -m pdiff evaluate --bundle checkpoints/fmnist-convnet/bundle --target clean --n 200 --seed $seed \
    --sampler ddpm --curves --no-tsne --json results/generator/default-seed$seed.json
done
# the first default bundle (before issue 12), from git history, measured by the same code at seed 0
python -m pdiff evaluate --bundle "${OLD_BUNDLE:-/tmp/oldbundle}" --target clean --n 200 --seed 0 \
  --sampler ddpm --curves --no-tsne --json results/generator/first-bundle-seed0.json
python bench/sample.py > results/generator/sample-bench.json
