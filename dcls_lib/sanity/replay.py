"""Skip the part of a forward pass that a randomisation cannot change.

Randomising the layers from the top down leaves everything below them as trained: their outputs
are the trained model's.  :func:`recording` keeps, for one batch, the outputs of chosen modules and
when each started and finished; :func:`replaying` then makes those modules return the kept outputs
instead of computing them (their instance ``forward`` is swapped).  Which modules may be replayed
is the caller's decision (:func:`replayable`).

In-place operations.  Outputs are kept as copies made when each module finishes, since the next
module may change its input in place (ResNet's ``ReLU(inplace=True)``).  A kept output that the
recorded pass changed in place is handed out as a fresh copy each time it is replayed; the others
are handed out as they are, and :func:`replaying` checks on leaving that none was changed.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Optional, Sequence

from torch import Tensor, nn


@dataclass
class Recording:
    """What one forward pass did in the recorded modules: outputs per call, first start and last end."""

    outputs: dict[str, list] = field(default_factory=dict)
    starts: dict[str, int] = field(default_factory=dict)
    ends: dict[str, int] = field(default_factory=dict)
    changed_in_place: set[str] = field(default_factory=set)  # outputs the next module overwrote


def _tensors(output) -> Optional[tuple[Tensor, ...]]:
    if isinstance(output, Tensor):
        return (output,)
    if isinstance(output, (tuple, list)) and all(isinstance(o, Tensor) for o in output):
        return tuple(output)
    return None  # not replayable


def _copied(output):
    return output.detach().clone() if isinstance(output, Tensor) else type(output)(o.detach().clone() for o in output)


def _versions(output) -> tuple[int, ...]:
    return tuple(t._version for t in _tensors(output))


@contextmanager
def recording(modules: Mapping[str, nn.Module]) -> Iterator[Recording]:
    """Record the outputs and the order of ``modules`` (name -> module) during the forward passes inside."""
    record, clock = Recording({name: [] for name in modules}), itertools.count()

    def started(name):
        def hook(module, inputs):
            record.starts.setdefault(name, next(clock))
        return hook

    def finished(name):
        def hook(module, inputs, output):
            kept = _copied(output) if _tensors(output) is not None else None
            record.outputs[name].append(kept)
            if kept is not None:
                live.append((name, output, _versions(output)))
            record.ends[name] = next(clock)
        return hook

    live: list = []  # the outputs as the forward pass used them, to see which were changed in place
    handles = [h for name, m in modules.items()
               for h in (m.register_forward_pre_hook(started(name)), m.register_forward_hook(finished(name)))]
    try:
        yield record
    finally:
        for handle in handles:
            handle.remove()
        record.changed_in_place = {name for name, output, versions in live if _versions(output) != versions}


def replayable(record: Recording, candidates: Sequence[str], changed: Sequence[str], target: str,
               changed_parameters: set[int], parameters: Mapping[str, set[int]]) -> list[str]:
    """The ``candidates`` whose recorded outputs are still right after ``changed`` are re-initialised.

    A module qualifies if it finished before any changed module started (so nothing changed fed
    it), shares no parameter with them (DCLS positions are shared across a stage), finished before
    the ``target`` layer did (a module after it carries the gradient to the target, which a
    replayed, detached output would cut), and its outputs could be kept.
    """
    first_change = min(record.starts.get(name, float("inf")) for name in changed)
    end_target = record.ends.get(target, -1)
    return [name for name in candidates
            if name not in changed and name in record.ends
            and record.ends[name] < first_change and record.ends[name] < end_target
            and not parameters[name] & changed_parameters
            and all(o is not None for o in record.outputs[name])]


@contextmanager
def replaying(modules: Mapping[str, nn.Module], record: Optional[Recording]) -> Iterator[None]:
    """Inside, each of ``modules`` returns its recorded outputs, call by call, without computing."""
    if record is None or not modules:
        yield
        return
    kept = {name: [_versions(o) for o in record.outputs[name]] for name in modules}
    for name, module in modules.items():
        calls = iter(record.outputs[name])

        def forward(*args, _calls=calls, _name=name, **kwargs):
            output = next(_calls, None)
            if output is None:
                raise RuntimeError(f"module {_name!r} ran more often than when it was recorded")
            return _copied(output) if _name in record.changed_in_place else output

        module.forward = forward
    try:
        yield
    finally:
        for module in modules.values():
            del module.forward
    for name, versions in kept.items():
        if [_versions(o) for o in record.outputs[name]] != versions:
            raise RuntimeError(f"the replayed output of {name!r} was changed in place; it cannot be replayed again")
