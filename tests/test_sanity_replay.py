"""Replaying recorded module outputs: the replayed forward gives the recorded result without running
the module, and a module that runs more often than recorded is refused."""

import pytest
import torch
from torch import nn

from dcls_lib.sanity.replay import recording, replayable, replaying


def test_replayed_modules_return_their_recorded_outputs_without_running():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Conv2d(4, 2, 3))
    x = torch.rand(2, 3, 8, 8)
    modules = {"0": model[0], "1": model[1], "2": model[2]}
    with recording(modules) as record:
        expected = model(x)
    assert record.starts["0"] < record.ends["0"] < record.starts["1"] < record.ends["2"]
    kept = record.outputs["0"][0].clone()
    with torch.no_grad():
        model[0].weight.zero_()  # a replayed module's weights no longer matter
    with replaying({"0": model[0]}, record):
        assert torch.equal(model(x), expected)
        assert torch.equal(record.outputs["0"][0], kept), "the in-place ReLU got a copy"
        with pytest.raises(RuntimeError, match="ran more often"):
            model(x)
    assert not torch.equal(model(x), expected), "outside the context the module runs again"


def test_only_modules_that_finished_before_the_change_and_share_nothing_with_it_replay():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4))
    model[1].weight = model[0].weight  # shared, as DCLS positions are across a stage
    modules = {str(i): m for i, m in enumerate(model)}
    with recording(modules) as record:
        model(torch.rand(1, 4))
    parameters = {name: {id(p) for p in m.parameters()} for name, m in modules.items()}
    changed = {id(p) for p in model[2].parameters()}
    assert replayable(record, list(modules), ["2"], "3", changed, parameters) == ["0", "1"]
    changed = {id(p) for p in model[1].parameters()}
    assert replayable(record, list(modules), ["1"], "3", changed, parameters) == []
    assert replayable(record, list(modules), ["2"], "1", {id(model[2].weight)}, parameters) == ["0"], \
        "nothing after the target layer"
