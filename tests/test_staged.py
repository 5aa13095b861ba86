
import torch

from pdiff.models.staged import BatchedEvaluator
from pdiff.models.loading import check_architecture



def test_batched_equals_one_model_at_a_time(tiny_bundle, small_test):
    model = check_architecture(tiny_bundle.task, tiny_bundle.base_state)
    ev = BatchedEvaluator(model, small_test.normalized(), tiny_bundle.names, max_elements=50_000)
    stacked = {n: v[:3] for n, v in
               zip(tiny_bundle.names, torch.split(tiny_bundle.originals, [torch.Size(s).numel() for _, s in tiny_bundle.layout], 1))}
    stacked = {n: stacked[n].reshape(3, *s) for n, s in tiny_bundle.layout}
    batched = ev.predict_many(stacked, models_per_chunk=2)
    for i in range(3):
        state = dict(tiny_bundle.base_state)
        state.update({n: v[i] for n, v in stacked.items()})
        one = check_architecture(tiny_bundle.task, state)
        with torch.no_grad():
            assert torch.equal(one(small_test.normalized()).argmax(-1), batched[i])
