#!/usr/bin/env bash
# The shallow transfer rows' generated column for the rebuilt default bundle (issue 12). The defence and
# originals columns do not depend on the generator: they stay in results/transfer/.
set -euo pipefail
for victim in scratch scratch-blended finetuned-badnets finetuned-blended; do
  python -m pdiff transfer --bundle checkpoints/fmnist-convnet/bundle --victim $victim --n 200 --seeds 0 1 2 \
    --sampler ddpm --methods generated,originals --json results/transfer-v2/shallow_$victim.json
done
