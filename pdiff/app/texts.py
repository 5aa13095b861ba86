"""Long texts for the app, kept out of the layout code."""

INTRO = """
# pdiff: neural-network parameter diffusion

Generate new parameters for a classifier's layers with a latent diffusion model
([p-diff](https://arxiv.org/abs/2402.13144)), splice them into a target model and see how
they perform next to the checkpoints they were trained on and the baselines that could explain
them without the method: their weight average, averages of 16, a per-number Gaussian (one matched to the
generated models' novelty), noisy copies (one matched to their accuracy) and interpolations. The plots and
the table show the generated models, the originals, the average and the Gaussian at their novelty; tick
**More sources** for any other (the JSON report holds them all).

Pick a bundle and a target, press **Run**. The target may be the bundle's clean model, one of
its backdoored victims (`victim`: BadNets, trained from scratch; `finetuned-*`: the clean model
fine-tuned on BadNets or blended poison), or a model you upload (a `.pth` state dict, a whole
module of a known architecture, BackdoorBench's `attack_result.pt`, or `.safetensors`): uploads
are loaded without running any pickled code.
"""

HOW_TO_READ = """
**How to read the results.** *Accuracy by source*: every generated model's test accuracy next to
the K originals and the baselines; the dashed line is the target as-is. *t-SNE*: one map of the
originals and the controls drawn at a fixed seed, into which the generated vectors and the matched
controls are placed. *Accuracy vs. novelty*: for every model of every source,
the IoU of its wrongly classified test images with those of its nearest original; right of the
dashed line (the originals' own nearest-other IoU) a model is closer to an original than the
originals are to each other: a copy. The table adds the spread (accuracy std, IoU within the
source) and coverage (the share of originals some model of the source is closer to than their
nearest other original). "Best" is the largest test accuracy: an upper bound only.
For a backdoored target, ASR is the share of triggered non-target images classified as the
target class, RA the share still classified correctly, DER the defence effectiveness
rating against the target as-is (0.5 = no change, 1 = backdoor gone at no accuracy cost).
The *transfer table* sets the generated layers beside what clean weights alone do (the clean
originals spliced in as they are, their average, and *clean-layers*: the clean model's own layers)
and, when ticked, the field's defences on a clean budget of 5 % of the training images, each at its
final checkpoint: the target's own layers fine-tuned (*finetune*) or re-initialised and retrained
(*reinit*), the whole target fine-tuned (*ft*), fine-pruning (*fp*), feature shift tuning (*fst*: the head
re-initialised and pushed away from the target's), adversarial neuron pruning (*anp*, 200 mask steps here where the
CLI runs BackdoorBench's 2,000, pruned as far as the clean budget's accuracy allows) and the data-free
channel-Lipschitz pruning (*clp*). The *clean-model* row is the clean model as
it is: a defender who holds it has nothing to repair. Each row states its clean resources: the clean images it
trained or fitted on, the images behind the clean model or checkpoints it uses, and how many checkpoints. In
*ACC vs. ASR* the black cross is the target as-is.

Data: Fashion-MNIST (Zalando Research, MIT licence).
"""
