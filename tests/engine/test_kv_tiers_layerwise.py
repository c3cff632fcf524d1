"""Layer-by-layer loading: layer l of a forward waits for layer l's copies only, when the
model asks for that layer, and nothing is left un-waited (`LayerWaits`). The CUDA stream is
replaced by a recorder: there is no GPU here (the GPU run is benchmarks/kv_tiers.py)."""

from __future__ import annotations

import pytest
import torch

from deploylab.engine.kv_tiers.layerwise import LayerWaits


class Recorder:
    """Stands in for the current CUDA stream: records the events waited for, in order."""

    def __init__(self) -> None:
        self.waited: list[str] = []

    def wait_event(self, event: str) -> None:
        self.waited.append(event)


@pytest.fixture
def stream(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder()
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: rec)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    return rec


def _layers(n: int) -> LayerWaits:
    t = torch.zeros(1)
    return LayerWaits([(t, t) for _ in range(n)])


def test_iteration_waits_for_each_layer_when_it_is_reached(stream: Recorder) -> None:
    layers = _layers(4)
    layers.arm(["e0", "e1", "e2", "e3"])
    it = iter(layers)
    assert stream.waited == []  # nothing before the model asks for layer 0
    next(it)
    assert stream.waited == ["e0"]
    next(it)
    assert stream.waited == ["e0", "e1"]  # layer 2's copies may still run
    list(it)
    assert stream.waited == ["e0", "e1", "e2", "e3"]
    list(layers)  # each event is waited for once
    assert stream.waited == ["e0", "e1", "e2", "e3"]


def test_indexing_and_flush_wait_for_the_rest(stream: Recorder) -> None:
    layers = _layers(4)
    layers.arm(["e0", None, "e2", "e3"])
    assert layers[-1][0] is not None
    assert stream.waited == ["e3"]
    layers[0:1]
    assert stream.waited == ["e3", "e0"]
    layers.arm(["f0", "f1", "f2", "f3"])  # a new step first waits for the old one's rest
    assert stream.waited == ["e3", "e0", "e2"]
    layers.flush()
    assert stream.waited == ["e3", "e0", "e2", "f0", "f1", "f2", "f3"]


def test_no_wait_while_a_graph_is_captured(
    stream: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    layers = _layers(2)
    layers.arm(["e0", "e1"])
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    list(layers)
    assert stream.waited == []  # an outside event inside a capture would break it
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    layers.flush()
    assert stream.waited == ["e0", "e1"]
