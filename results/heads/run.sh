#!/usr/bin/env bash
# The equivariant head generator on held-out trunks (docs/heads.md). Run from the repository root; one thread per job.
# Each generator trains in about ten minutes on one quiet CPU thread; each study takes about ten more.
set -euo pipefail
export OMP_NUM_THREADS=1 TQDM_DISABLE=1
H="python experiments/heads.py"
# 1. the generator as first designed: the condition is the shots' class means and the pool's statistics
$H train --trunks 0-15 --out runs/heads/t16-a --steps 1000
$H study --generator runs/heads/t16-a --held 16-19 --json results/heads/t16-a.json
# 2. a principled fix: the condition also reads class means refined on the pool (k-means from the shots' means), and
#    the diffusion generates the residual from the training trunks' own heads with channels matched to the trunk on
#    the pool (the matched_average control), which the condition reads too
$H train --trunks 0-15 --out runs/heads/t16-rm --steps 1000 --refine --prior matched
$H study --generator runs/heads/t16-rm --held 16-19 --json results/heads/t16-rm.json
# 3. the same, the condition also reading each channel's match quality (the donors' mean correlation with it)
$H train --trunks 0-15 --out runs/heads/t16-rmq --steps 1000 --refine --prior matched --quality
$H study --generator runs/heads/t16-rmq --held 16-19 --json results/heads/t16-rmq.json
# 4. the curve against the number of training trunks (K = 5): trunks 0-3, 0-7, 0-15 (above), and 0-15 with the zoo's
#    trunks 20-25 (8 epochs each, experiments/trunk_zoo.py); the stitch and matched controls use the same trunks
$H train --trunks 0-3 --out runs/heads/t4-rmq --steps 1000 --refine --prior matched --quality
$H study --generator runs/heads/t4-rmq --held 16-19 --ks 5 --json results/heads/curve-t4.json
$H train --trunks 0-7 --out runs/heads/t8-rmq --steps 1000 --refine --prior matched --quality
$H study --generator runs/heads/t8-rmq --held 16-19 --ks 5 --json results/heads/curve-t8.json
$H train --trunks 0-15,20-25 --out runs/heads/t22-rmq --steps 1000 --refine --prior matched --quality
$H study --generator runs/heads/t22-rmq --held 16-19 --ks 5 --json results/heads/curve-t22.json
# 5. guidance on the validation split (held-out trunks 16 and 17), and the same generator on two training trunks
$H sweep --generator runs/heads/t16-a --trunks 16,17 --scales 0.5,1,2 --n 10 --json results/heads/sweep-t16-a.json
$H sweep --generator runs/heads/t16-rmq --trunks 16,17 --scales 0.5,1,2 --n 10 --json results/heads/sweep-t16-rmq.json
$H sweep --generator runs/heads/t16-rmq --trunks 0,1 --scales 1 --n 10 --json results/heads/sweep-t16-rmq-training.json
# 6. eight held-out trunks (16-19, 2 epochs; the zoo's 44-47, 8 epochs) and 40 training trunks (0-15 and the zoo's
#    20-43): the generator of step 3 on all of them, shipped as checkpoints/fmnist-convnet-trunks/heads (`python -m
#    pdiff heads`), studied at K = 1, 5, 20 (about 15 minutes beside two other jobs)
$H train --trunks 0-15,20-43 --out runs/heads/t40-rmq --steps 1000 --refine --prior matched --quality
$H ship --generator runs/heads/t40-rmq --out checkpoints/fmnist-convnet-trunks/heads
$H study --generator runs/heads/t40-rmq --held 16-19,44-47 --json results/heads/t40-rmq.json
# 7. the curve on the same eight held-out trunks (K = 5): 16 training trunks (0-15: step 3's generator), 32 (0-15,
#    20-35) and 40 (above)
$H train --trunks 0-15,20-35 --out runs/heads/t32-rmq --steps 1000 --refine --prior matched --quality
$H study --generator runs/heads/t32-rmq --held 16-19,44-47 --ks 5 --json results/heads/curve8-t32.json
$H study --generator runs/heads/t16-rmq --held 16-19,44-47 --ks 5 --json results/heads/curve8-t16.json
# 8. the shipped generator's guidance scale on the validation split, on a held-out trunk of each recipe
$H sweep --generator runs/heads/t40-rmq --trunks 16,44 --scales 0.5,1,2 --n 10 --json results/heads/sweep-t40-rmq.json
# 9. the shipped command on two ConvNets no study held out (made by `pdiff collect`, not the zoo's loop)
python -m pdiff heads --target checkpoints/fmnist-convnet/base.safetensors --condition trunk=target --shots 5 \
    --json results/heads/other-fmnist-convnet-base.json --device cpu
python -m pdiff heads --target checkpoints/fmnist-convnet-budget/base.safetensors --condition trunk=target --shots 5 \
    --json results/heads/other-budget-base.json --device cpu
# 10. the run the app's heads panel opens on (beside the kit, with the weights' SHA-256)
python -m pdiff.app.heads trunk-47
