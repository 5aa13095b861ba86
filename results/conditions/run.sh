#!/usr/bin/env bash
# Conditional generation (docs/conditions.md). Run from the repository root; one thread per job.
set -euo pipefail
export OMP_NUM_THREADS=1 TQDM_DISABLE=1
R=results/conditions
# 1. accuracy: the default bundle, trained with each checkpoint's validation accuracy as its condition. The guidance
#    scale chosen on the validation split came out 0 (the unconditional model), so acc=best is asked at guidance 1
#    (the conditional model itself) at three seeds, beside the same bundle unconditional; the top-q Gaussians'
#    temperature sweep beside it (--curves). The sweep asks six accuracies across the originals' range at guidance 1
#    and 3.
B=checkpoints/fmnist-convnet/bundle
python -m pdiff train --collection checkpoints/fmnist-convnet --out $B --seed 0 --condition acc
python experiments/acc_sweep.py --bundle $B --n 50 --values 6 --guidance 1
for s in 0 1 2; do
  python -m pdiff evaluate --bundle $B --target clean --n 200 --seed $s --sampler ddpm --condition acc=best --guidance 1 \
    --curves --no-tsne --json $R/acc-best-seed$s.json
done
python -m pdiff evaluate --bundle $B --target clean --n 200 --seed 0 --sampler ddpm --condition none --curves \
  --no-tsne --json $R/acc-none-seed0.json
python experiments/acc_sweep.py --bundle $B --n 50 --values 6 --guidance 3
python bench/sample.py --bundle $B --signature > $R/sample-bench.json
python -m pdiff.app.examples    # the example runs the app opens on, for the new default bundle
# 2. trunks: 20 ConvNet trunks trained from scratch (2 epochs each) with 25 float16 checkpoints of the head each,
#    on two torchrun ranks; trunks 16-19 held out of the generator's training (and written as whole models to held-out/)
T=checkpoints/fmnist-convnet-trunks
torchrun --standalone --nproc-per-node 2 -m pdiff collect --trunks 20 --trunk-mode scratch --epochs 2 --k 500 --storage-dtype float16 --out $T --seed 0
python -m pdiff train --collection $T --out $T/bundle --seed 0 --condition trunk --hold-out-trunk 16 17 18 19
python - <<'PY'  # the held-out trunks as whole models (their own trained heads), as a user would upload them
from pathlib import Path
from pdiff.collection.folder import Collection
from pdiff.core.files import write_safetensors
trunks = Collection.load("checkpoints/fmnist-convnet-trunks").trunks
for t in (16, 17, 18, 19):
    write_safetensors(Path("checkpoints/fmnist-convnet-trunks/held-out") / f"trunk-{t}.safetensors", trunks[t])
PY
python -m pdiff trunks --bundle $T/bundle --collection $T --n 50 --json $R/trunks.json
# 3. a scratch BadNets victim (not in any collection) gets layers for its own trunk, beside the stitch and fp
python -m pdiff transfer --bundle $T/bundle --victim checkpoints/fmnist-convnet/victim.safetensors --condition trunk=target \
  --n 200 --seeds 0 --methods generated,originals,average,clean-model,probe,fp,stitch+generated,stitch+clean-layers \
  --json $R/trunk-victim.json
python results/conditions/table.py --write
