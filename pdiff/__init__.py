"""pdiff: neural-network parameter diffusion (p-diff) as a library, CLI and Gradio app.

The Python API, for any nn.Module and data given as tensors (README, "Your own model"; examples/own_model.py):
`task` (a model factory or module + the names of the layers to generate), `Split` (images as uint8 or float
tensors, labels, optional mean/std), then `collect` -> `train` -> `sample` -> `evaluate`, in memory; each
returns an object with `.save(folder)` (`Collection`, `Bundle`, `Samples`, `Report`), and `load` reads them back.

How the data flows, module by module:
`data` (datasets as uint8 `Split`s) and `archs`/`tasks` (models, named presets) feed `collect`, which
trains a base and saves K checkpoints of its `train_layer` on the frozen trunk as a `collection.Collection`
(one writer, one reader); `victims` trains backdoored models beside it (`backdoor` holds the triggers and
ASR/RA/DER). `train` normalises the checkpoints (`params`), fits the autoencoder and the latent denoiser
(`nets`, schedule in `diffusion`) and returns a `bundle.Bundle` (safetensors + bundle.json, local or Hub via
`hub`). `sample` draws new vectors from a bundle; `splice` puts vectors into a model by name; `targets`
loads and names the models they go into. `evaluate` is the one measurement engine: `measure` takes
parameter sets by source (generated, originals, `baselines`, the layer defences) and a `TargetEngine`, and
returns every source's metrics and similarity; `TargetEngine.measure_state` measures a whole defended model
(`defences`: fine-tuning, fine-pruning, CLP at a clean-data budget) on the same images. `stitch` maps a
victim's features onto the clean base's at the splice point (a 1x1 map fitted on clean images), so the engine
can run layers fitted to the clean trunk on a victim trained from scratch. `report` (evaluate), `transfer` and
`trunks` (leave-one-trunk-out)
are short compositions of it; `plots` draws a report, `ui` is the app, `cli` the command line.
"""

__version__ = "0.2.0"

# the API's functions take the names of the modules collect, train, sample and evaluate: importing pdiff.api
# first loads those modules, then these names are bound to the functions
from pdiff.api import Report, Samples, collect, evaluate, load, sample, task, train  # noqa: E402
from pdiff.bundle import Bundle  # noqa: E402
from pdiff.collection import Collection  # noqa: E402
from pdiff.config import AEConfig, DDPMConfig, Recipe, Task  # noqa: E402
from pdiff.archs import register_arch  # noqa: E402
from pdiff.data import DatasetSpec, Split, register_dataset  # noqa: E402
from pdiff.tasks import register_task  # noqa: E402

__all__ = ["task", "collect", "train", "sample", "evaluate", "load", "Split", "Task", "Recipe", "AEConfig",
           "DDPMConfig", "Collection", "Bundle", "Samples", "Report", "register_arch", "register_dataset", "DatasetSpec",
           "register_task", "__version__"]
