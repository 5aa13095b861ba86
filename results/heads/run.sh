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
