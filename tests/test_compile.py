"""``torch.compile`` of converted models: training gives eager mode's values, the CPU kernels
enter the compiled graph as their registered ops, and each DynOPool costs one graph break (its
integer output size is read from alpha, a data-dependent shape); frozen models compile whole."""

import copy

import pytest
import torch
import torch.nn.functional as F
from functorch.compile import make_boxed_func
from test_layer import backward_path, kernels  # noqa: F401  (fixtures)
from torch._dynamo.backends.common import aot_autograd
from torch._dynamo.utils import counters

from dynopool_nas import DynOPool2d, _extension, dynopoolify, freeze_dynopools
from dynopool_nas.models import create_model

BATCH, SIDE, STEPS = 4, 16, 3


@pytest.fixture(autouse=True)
def _fresh_compiler():
    """Each test compiles from scratch: no cached graph (or exhausted recompile limit) of an
    earlier test decides what runs."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _dynopools(model: torch.nn.Module) -> list[DynOPool2d]:
    return [module for module in model.modules() if isinstance(module, DynOPool2d)]


def _converted(aggregation: str = "max") -> torch.nn.Module:
    """The converted small CNN with scales off the pixel grid (no layer is a max_pool2d)."""
    torch.manual_seed(0)
    model = dynopoolify(create_model("small_cnn", num_classes=10, in_chans=1), aggregation=aggregation)
    with torch.no_grad():
        for i, layer in enumerate(_dynopools(model)):
            layer.alpha.copy_(torch.tensor([1.7 + 0.1 * i, 2.3 - 0.2 * i]))
    return model


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 1, SIDE, SIDE, generator=generator), torch.randint(0, 10, (BATCH,), generator=generator)


def _train(model: torch.nn.Module, run) -> list[tuple[torch.Tensor, dict[str, torch.Tensor], tuple[int, int]]]:
    """SGD steps on every parameter (alpha included); before the last step the first DynOPool's
    scale is set so that its output size changes, which a compiled graph must not have baked in.
    Returns each step's output, gradients and first output size."""
    images, labels = _batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    first = _dynopools(model)[0]
    history = []
    for step in range(STEPS):
        if step == STEPS - 1:
            with torch.no_grad():
                first.alpha.copy_(torch.tensor([1.4, 2.9]))
        optimizer.zero_grad()
        out = run(images)
        F.cross_entropy(out, labels).backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        history.append((out.detach().clone(), grads, first.output_size))
        optimizer.step()
    return history


def _assert_trains_as_eager(backend, aggregation: str = "max") -> None:
    eager = _converted(aggregation)
    compiled = copy.deepcopy(eager)
    expected = _train(eager, eager)
    got = _train(compiled, torch.compile(compiled, backend=backend))
    assert expected[0][2] != expected[-1][2], "the last step must change an output size"
    for (out_e, grads_e, size_e), (out_c, grads_c, size_c) in zip(expected, got):
        assert size_c == size_e
        torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-5)
        assert grads_c.keys() == grads_e.keys()
        for name in grads_e:
            torch.testing.assert_close(grads_c[name], grads_e[name], rtol=1e-4, atol=1e-6, msg=name)
    alphas = [name for name in expected[0][1] if name.endswith("alpha")]
    assert len(alphas) == 3 and all(expected[0][1][name].abs().min() > 0 for name in alphas)
    for p_c, p_e in zip(compiled.parameters(), eager.parameters()):
        torch.testing.assert_close(p_c, p_e, rtol=1e-4, atol=1e-6)


def test_compiled_training_matches_eager(backward_path):  # noqa: F811
    _assert_trains_as_eager("aot_eager")


def test_compiled_training_matches_eager_with_mean_aggregation():
    _assert_trains_as_eager("aot_eager", aggregation="mean")


def test_the_compiled_graph_calls_the_registered_kernels(kernels, monkeypatch):  # noqa: F811
    """On the CPU the compiled graphs hold the kernels' ops, forward and backward, not a
    PyTorch-operator substitute, also where the first call is compiled: the compiler loads
    the kernels (which reads files, nothing a tracer can follow) rather than tracing the load."""
    loads = []

    def load() -> bool:
        loads.append(_extension._CSRC.stat())
        return True

    monkeypatch.setattr(_extension, "_load", load)
    monkeypatch.setattr(_extension, "_loaded", None)
    forward_ops, backward_ops = set(), set()

    def capture(into):
        def compiler(graph, example_inputs):
            into.update(node.target for node in graph.graph.nodes if node.op == "call_function")
            return make_boxed_func(graph.forward)

        return compiler

    model = _converted()
    images, _ = _batch()
    backend = aot_autograd(fw_compiler=capture(forward_ops), bw_compiler=capture(backward_ops))
    counters.clear()
    torch.compile(model, backend=backend)(images).sum().backward()
    assert len(loads) == 1
    assert sum(counters["graph_break"].values()) == len(_dynopools(model))
    assert torch.ops.dynopool_nas.max_forward.default in forward_ops
    assert torch.ops.dynopool_nas.max_backward.default in backward_ops
    assert torch.ops.aten.max_pool2d_with_indices.default not in forward_ops
    assert all(layer.alpha.grad is not None and layer.alpha.grad.abs().sum() > 0 for layer in _dynopools(model))


def test_one_graph_break_per_dynopool():
    """The integer output size depends on alpha's value; each DynOPool reads it in one
    uncompiled call (``DynOPool2d._output_size``) and nothing else breaks the graph."""
    model = _converted()
    images, _ = _batch()
    explanation = torch._dynamo.explain(model)(images)
    assert explanation.graph_break_count == len(_dynopools(model)) == 3
    assert explanation.break_reasons
    assert all("DynOPool2d._output_size" in reason.reason for reason in explanation.break_reasons)


def test_a_frozen_model_compiles_without_graph_breaks():
    model = _converted()
    images, _ = _batch()
    frozen = freeze_dynopools(model, (1, SIDE, SIDE)).eval()
    compiled = torch.compile(frozen, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(images), frozen(images), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_inductor_training_matches_eager(kernels):  # noqa: F811
    _assert_trains_as_eager("inductor")
