#!/usr/bin/env bash
# The transfer table of docs/transfer.md: the shipped default bundle's generated layers on the four shipped victims,
# beside the controls and the defences, one seed, N = 200. Run from the repository root. The reports here were
# measured with the code of commit 372ca2a on one thread beside other jobs: 11 to 15 minutes a victim.
set -euo pipefail
export OMP_NUM_THREADS=1 TQDM_DISABLE=1
for v in finetuned-badnets finetuned-blended scratch-badnets scratch-blended; do
  python -m pdiff transfer --bundle checkpoints/fmnist-convnet/bundle --victim $v --condition none --methods all \
    --n 200 --seeds 0 --sampler ddpm --k-defence 20 --anp-iterations 200 --revived 0 --json results/transfer/$v.json
done
python results/transfer/table.py --write
