#!/usr/bin/env bash
# Leave-one-trunk-out on trunks that differ for real (issue 13, item 8), full size: 60,000 training images, K = 200
# (50 per trunk), the default task's recipe. Run from the repository root; table by `python results/loto/table.py`.
# reinit: trunks 1-3 have the first half of the trunk re-initialised, then the whole model retrained for one epoch;
# scratch: trunks 1-3 trained from other initialisations with the full recipe. Trunk 3 is held out; the stitch maps
# it onto trunk 0 (the base) on a 5 % clean budget drawn with the seed.
set -euo pipefail
for mode in reinit scratch; do
  d=$(mktemp -d)/$mode
  python -m pdiff collect --trunks 4 --trunk-mode $mode --from-base checkpoints/fmnist-convnet/base.safetensors --out $d --seed 0
  cp $d/manifest.json results/loto/$mode-manifest.json
  python -m pdiff train --collection $d --hold-out-trunk 3 --out $d/bundle-loto3 --seed 0 --no-recon-eval
  for s in 0 1 2; do
    python -m pdiff loto --bundle $d/bundle-loto3 --collection $d --n 200 --seed $s --stitch --json results/loto/$mode-seed$s.json
  done
done
