"""pdiff: neural-network parameter diffusion (p-diff) as a library, CLI and Gradio app.

How the data flows, module by module:
`data` (datasets as uint8 `Split`s) and `archs`/`tasks` (models, named presets) feed `collect`, which
trains a base and saves K checkpoints of its `train_layer` on the frozen trunk as a `collection.Collection`
(one writer, one reader); `victims` trains backdoored models beside it (`backdoor` holds the triggers and
ASR/RA/DER). `train` normalises the checkpoints (`params`), fits the autoencoder and the latent denoiser
(`nets`, schedule in `diffusion`) and returns a `bundle.Bundle` (safetensors + bundle.json, local or Hub via
`hub`). `sample` draws new vectors from a bundle; `splice` puts vectors into a model by name; `targets`
loads and names the models they go into. `evaluate` is the one measurement engine: `measure` takes
parameter sets by source (generated, originals, `baselines`, defences) and a `TargetEngine`, and returns
every source's metrics and similarity; `stitch` maps a victim's features onto the clean base's at the splice
point (a 1x1 map fitted on clean images), so the engine can run layers fitted to the clean trunk on a victim
trained from scratch. `report` (evaluate), `transfer` and `trunks` (leave-one-trunk-out)
are short compositions of it; `plots` draws a report, `ui` is the app, `cli` the command line.
"""

__version__ = "0.2.0"
