#!/usr/bin/env bash
# The threat-model study (docs/threat-model.md): a defender who holds the clean budget only. Run from the repository
# root; one thread per job (OMP_NUM_THREADS=1), smallest first. EPOCHS is chosen on the validation split by
# experiments/donor_epochs.py (results/threat-model/donor-epochs.json).
set -euo pipefail
export OMP_NUM_THREADS=1 TQDM_DISABLE=1
EPOCHS=${EPOCHS:-$(python -c "import json; print(json.load(open('results/threat-model/donor-epochs.json'))['chosen'])")}
D=checkpoints/fmnist-convnet-budget
# The design: three scratch victims per trigger (s1 s2 s3) x three generator seeds (0 1 2), 18 runs; a run that has its
# JSON already is skipped, so the design can be run in parts (GENS, VICTIMS) and resumed
GENS=${GENS:-"0 1 2"} VICTIMS=${VICTIMS:-"s1 s2 s3"}
# 1. the budget donor: 3,000 images drawn with seed 0 from the first 55,000, its base and K = 200 checkpoints,
#    the default collection's four victims beside it; its bundle at three generator seeds, each keeping the full
#    clean model as the clean-model control
if [ ! -f $D/manifest.json ]; then
  python -m pdiff collect --train-on budget --budget-seed 0 --epochs "$EPOCHS" --out $D --seed 0
  cp checkpoints/fmnist-convnet/victim*.safetensors checkpoints/fmnist-convnet/victim*.json $D/
fi
[ -f $D/bundle/bundle.json ] || python -m pdiff train --collection $D --out $D/bundle --seed 0 --clean-model checkpoints/fmnist-convnet
# 2. the scratch victims (seeds 1, 2, 3) x the generator seeds (bundle seed g, sampling and defences seed g): every
#    control, ft, fp, fst, clp, ANP at 2,000 mask steps with the budget-accuracy pruning rule, the stitch; the revival
#    attack calibrated on the validation split, on the first 3 models of each method. N = 100 sets, DDPM-1000
METHODS=generated,originals,average,clean-layers,clean-model,donor,probe,ft,fp,fst,clp,anp,stitch+generated,stitch+clean-layers,stitch+victim-tail
V=checkpoints/fmnist-convnet
for g in $GENS; do
  bundle=$D/bundle; [ "$g" = 0 ] || bundle=$D/bundle-seed$g
  [ -f $bundle/bundle.json ] || python -m pdiff train --collection $D --out $bundle --seed $g --clean-model checkpoints/fmnist-convnet --no-recon-eval
  for pair in badnets-s1:$V/victim.safetensors badnets-s2:$V/more-victims/victim-scratch-badnets-s2.safetensors \
              badnets-s3:$V/more-victims/victim-scratch-badnets-s3.safetensors blended-s1:$V/victim-scratch-blended.safetensors \
              blended-s2:$V/more-victims/victim-scratch-blended-s2.safetensors \
              blended-s3:$V/more-victims/victim-scratch-blended-s3.safetensors; do
    name=${pair%%:*} victim=${pair#*:}
    [[ " $VICTIMS " == *" ${name#*-} "* ]] || continue
    out=results/threat-model/$name-g$g.json
    [ -f "$out" ] && grep -q '"fst"' "$out" && continue   # done with this design (the earlier runs had no fst)
    python -m pdiff transfer --bundle "$bundle" --victim "$victim" --seeds $g --n 100 --sampler ddpm --methods $METHODS \
      --revived 3 --json "$out"
  done
done
python results/threat-model/table.py --write
