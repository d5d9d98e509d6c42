"""TorchScript models: converted to a torch.fx graph and probed in the graph.

A TorchScript module cannot take forward hooks, and its forward code runs
outside Python, so the hook engine cannot see it. Instead the model is
converted once (torch's TorchScript-to-``torch.export`` converter, torch >=
2.4) to an ATen-level ``torch.fx`` graph; each conv node is found by its
weight (``features.0.weight`` names layer ``features.0``, as
``named_modules()`` of the TorchScript module does), its output is followed
through batch norm to the activation that directly consumes it, and a probe
call is inserted right after the measured node. The probe hands the tensor to
the active :class:`~filtag_kg.activations.FilterProbe`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import fx, nn

from .errors import UnknownLayerError, UnknownModelError
from .measure import MeasurePoint

_aten = torch.ops.aten
_CONV = {_aten.conv2d.default, _aten.convolution.default, _aten._convolution.default}
_BATCH_NORM = {_aten.batch_norm.default, _aten._native_batch_norm_legit_no_training.default}
_ACT = {
    _aten.relu.default: "relu", _aten.relu_.default: "relu", _aten.relu6.default: "relu6",
    _aten.hardtanh.default: "hardtanh", _aten.hardtanh_.default: "hardtanh",
    _aten.leaky_relu.default: "leaky_relu", _aten.leaky_relu_.default: "leaky_relu",
    _aten.silu.default: "silu", _aten.silu_.default: "silu", _aten.gelu.default: "gelu",
    _aten.elu.default: "elu", _aten.elu_.default: "elu", _aten.sigmoid.default: "sigmoid",
    _aten.sigmoid_.default: "sigmoid", _aten.tanh.default: "tanh", _aten.tanh_.default: "tanh",
    _aten.hardswish.default: "hardswish", _aten.hardswish_.default: "hardswish",
    _aten.mish.default: "mish",
}

_ACTIVE: list[object] = []  # FilterProbes currently recording (innermost last)


@torch.fx.wrap
def filtag_probe(x: torch.Tensor, index: int) -> None:
    """Graph probe: give measure point ``index``'s tensor to the active FilterProbe."""
    if _ACTIVE:
        _ACTIVE[-1].record(index, x)  # type: ignore[attr-defined]


def _first_user(node: fx.Node, order: dict[fx.Node, int]) -> fx.Node | None:
    users = sorted(node.users, key=order.__getitem__)
    return users[0] if users else None


def instrument_torchscript(
    module: nn.Module, layers: Sequence[str], example: torch.Tensor, *, measure: str = "activation"
) -> tuple[fx.GraphModule, list[MeasurePoint]]:
    """Convert a TorchScript module to an fx graph with probes at the measure points.

    Returns:
        The probed graph module (call it like the original) and one
        :class:`MeasurePoint` per layer, in the order given.

    Raises:
        UnknownModelError: this torch cannot convert the module.
        UnknownLayerError: a layer has no conv node in the graph.
    """
    try:
        from torch._export.converter import TS2EPConverter
    except ImportError:
        raise UnknownModelError(
            f"torch {torch.__version__} cannot convert TorchScript models (needs torch >= 2.4); "
            "pass the architecture as package.module:factory with --weights-file instead"
        ) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = TS2EPConverter(module, (example,)).convert().module()
    except Exception as exc:  # noqa: BLE001 - any converter failure is reported the same way
        raise UnknownModelError(
            f"cannot convert this TorchScript model to a graph ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); pass the architecture as "
            "package.module:factory with --weights-file instead"
        ) from None
    graph = gm.graph
    order = {n: i for i, n in enumerate(graph.nodes)}
    convs: dict[str, fx.Node] = {}
    for node in graph.nodes:
        if node.op == "call_function" and node.target in _CONV:
            w = node.args[1]
            if isinstance(w, fx.Node) and w.op == "get_attr" and str(w.target).endswith("weight"):
                convs[str(w.target).rsplit(".", 1)[0]] = node
    points: list[MeasurePoint] = []
    for i, name in enumerate(layers):
        node = convs.get(name)
        if node is None:
            raise UnknownLayerError(f"layer {name!r} has no convolution in the converted graph")
        weight: object = gm
        for part in str(node.args[1].target).split("."):  # type: ignore[union-attr]
            weight = getattr(weight, part)
        width = int(weight.shape[0])  # type: ignore[attr-defined]
        at, kind, act, through = node, "conv", None, []
        if measure == "activation":
            cur = node
            while (user := _first_user(cur, order)) is not None and user.args and user.args[0] is cur:
                if user.target in _BATCH_NORM:
                    cur = user
                    nxt = _first_user(user, order)
                    if user.target != _aten.batch_norm.default and nxt is not None:
                        cur = nxt  # getitem(result, 0) of the native op
                    through.append(user.name)
                    continue
                if user.target in _ACT:
                    at, kind, act = user, "activation", _ACT[user.target]
                break
        with graph.inserting_after(at):
            graph.call_function(filtag_probe, (at, i))
        points.append(MeasurePoint(name, width, f"graph:{at.name}", kind, act, through))
    gm.recompile()
    gm.filtag_graph_probes = True  # type: ignore[assignment]
    return gm, points
