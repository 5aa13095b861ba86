#!/usr/bin/env bash
# The reports behind the README's generator table (issue 12). Run from the repository root.
set -euo pipefail
for seed in 0 1 2; do
  python -m pdiff evaluate --bundle checkpoints/fmnist-convnet/bundle --target clean --n 200 --seed $seed \
    --sampler ddpm --curves --no-tsne --json results/generator/default-seed$seed.json
done
python -m pdiff evaluate --bundle checkpoints/fmnist-convnet/bundle --target clean --n 200 --seed 0 \
  --sampler ddim --steps 50 --no-tsne --json results/generator/ddim50-seed0.json
# the first default bundle (before issue 12), taken from git history, measured by the same code at seed 0
old=$(mktemp -d)
for f in $(git ls-tree --name-only 8243234 checkpoints/fmnist-convnet/bundle/); do
  git show "8243234:$f" > "$old/$(basename "$f")"
done
python -m pdiff evaluate --bundle "$old" --target clean --n 200 --seed 0 \
  --sampler ddpm --curves --no-tsne --json results/generator/first-bundle-seed0.json
python - <<'PY'  # name the bundle by its commit, not by the temporary folder it was read from
import json; p = "results/generator/first-bundle-seed0.json"; r = json.load(open(p))
r["bundle"] = "checkpoints/fmnist-convnet/bundle at commit 8243234 (the first default bundle)"
json.dump(r, open(p, "w"), indent=1)
PY
rm -rf "$old"
python bench/sample.py > results/generator/sample-bench.json
