"""Small helpers the tests share (pytest puts this folder on sys.path)."""
import copy

from pdiff.config import Task


def with_recipe(bundle, **changes):
    """A shallow copy of `bundle` whose task recipe has `changes`; the session-wide bundle stays as it is."""
    changed = copy.copy(bundle)
    changed.task = Task.from_dict(bundle.task.to_dict())
    for name, value in changes.items():
        setattr(changed.task.recipe, name, value)
    return changed
