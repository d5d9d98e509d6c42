"""Where each conv filter's activation is measured, found from the forward pass.

The method measures a filter after the nonlinearity that directly follows
its convolution (through a BatchNorm if one sits between), as Keras conv
layers include their activation; where no nonlinearity follows directly, at
the conv output. Module names are no evidence of that, so this module runs
one recorded forward pass: module hooks and a ``TorchFunctionMode`` log every
leaf-module call and every top-level tensor function with the identities
(object id and in-place version counter) of the tensors they read and write,
and the conv's output tensor is followed to the modules and functions that
consume it. Tracking the version counter means an in-place op (``out +=
identity`` in a ResNet block) breaks the chain, as it should.

The result, per layer, is a :class:`MeasurePoint`: which module's output to
hook (and, for a module that runs several times per forward pass, such as
ResNet's shared ``self.relu``, which of its calls), or, when the activation
is a function call, which pure activation to apply in the hook.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode, _get_current_function_mode, _pop_mode, _push_mode
from torch.utils._pytree import tree_flatten

from .errors import UnknownLayerError

_ACTIVATION_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh,
    nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid,
)

# activation functions (as the TorchFunctionMode sees them) -> out-of-place equivalent
_ACTIVATION_FUNCS: dict[Any, Callable[..., torch.Tensor]] = {
    F.relu: F.relu, torch.relu: torch.relu, torch.relu_: torch.relu, F.relu_: torch.relu,
    torch.Tensor.relu: torch.relu, torch.Tensor.relu_: torch.relu,
    F.relu6: F.relu6, F.leaky_relu: F.leaky_relu, F.leaky_relu_: F.leaky_relu,
    F.elu: F.elu, F.elu_: F.elu, F.selu: F.selu, F.celu: F.celu, F.gelu: F.gelu,
    F.silu: F.silu, F.mish: F.mish, F.hardswish: F.hardswish, F.hardsigmoid: F.hardsigmoid,
    F.hardtanh: F.hardtanh, F.hardtanh_: F.hardtanh, F.softplus: F.softplus,
    torch.sigmoid: torch.sigmoid, F.sigmoid: torch.sigmoid, torch.Tensor.sigmoid: torch.sigmoid,
    torch.Tensor.sigmoid_: torch.sigmoid, torch.tanh: torch.tanh, F.tanh: torch.tanh,
    torch.Tensor.tanh: torch.tanh, torch.Tensor.tanh_: torch.tanh,
}


@dataclass
class MeasurePoint:
    """Where one conv layer's filters are measured.

    Attributes:
        layer: the conv layer's module path.
        width: number of filters (output channels).
        hook_module: module path whose forward output the hook reads.
        kind: ``"activation"`` (after the nonlinearity) or ``"conv"`` (conv output).
        activation: the nonlinearity's name (``"ReLU"``, ``"relu"``), if any.
        through: module paths between the conv and the measured output (e.g. a BatchNorm).
        apply: a pure function the hook applies to the module output before
            reducing (the activation, when it is a function call), or ``None``.
        call_index: which call of ``hook_module`` in one forward pass (0-based),
            for modules that run several times per pass.
        calls_per_forward: how often ``hook_module`` runs in one forward pass.
    """

    layer: str
    width: int
    hook_module: str
    kind: str
    activation: str | None = None
    through: list[str] = field(default_factory=list)
    apply: Callable[[torch.Tensor], torch.Tensor] | None = None
    call_index: int = 0
    calls_per_forward: int = 1

    def describe(self) -> str:
        """Readable one-liner, as stored in artifacts (``measured_at``)."""
        if self.kind == "conv":
            return f"{self.layer} (conv output)"
        how = f"{self.activation} applied in the hook" if self.apply is not None else self.activation
        if self.calls_per_forward > 1:
            how += f", call {self.call_index + 1} of {self.calls_per_forward}"
        return f"{self.hook_module} ({how})"

    def record(self) -> dict[str, Any]:
        """Plain-JSON form for artifacts."""
        return {
            "layer": self.layer,
            "width": self.width,
            "hook_module": self.hook_module,
            "kind": self.kind,
            "activation": self.activation,
            "through": list(self.through),
            "applied_in_hook": self.apply is not None,
            "call_index": self.call_index,
            "calls_per_forward": self.calls_per_forward,
            "description": self.describe(),
        }


def point_from_record(record: dict[str, Any], *, layer: str, width: int) -> MeasurePoint | None:
    """The :class:`MeasurePoint` a profile recorded for ``layer`` (``record``: the layer's
    entry in ``profile.json``, see :meth:`MeasurePoint.record`), or ``None`` where the
    record cannot rebuild it (an activation applied in the hook needs the function's
    arguments, which only a recorded pass holds; a profile older than these fields)."""
    keys = ("hook_module", "kind", "call_index", "calls_per_forward")
    if record.get("applied_in_hook") or any(k not in record for k in keys):
        return None
    return MeasurePoint(
        layer, int(width), str(record["hook_module"]), str(record["kind"]), record.get("activation"),
        list(record.get("through") or []), None, int(record["call_index"]), int(record["calls_per_forward"]),
    )


@dataclass
class _Event:
    kind: str  # "module" or "func"
    target: Any  # module name or function
    module: nn.Module | None
    ins: list[tuple[int, int]]
    outs: list[tuple[int, int]]
    rest: tuple[Any, ...] = ()  # an activation function's arguments after the tensor
    kwargs: dict[str, Any] = field(default_factory=dict)


class _Recorder(TorchFunctionMode):
    """Logs leaf-module calls and top-level tensor functions with tensor identities.

    A tensor's identity is a serial number given the first time it is seen and kept
    while it lives (a weak reference tells whether the object behind an ``id`` is still
    the same), with its in-place version counter: so the recorded pass keeps no tensor
    alive and a freed tensor's reused ``id`` is never taken for the old tensor.
    """

    def __init__(self) -> None:
        super().__init__()
        self.events: list[_Event] = []
        self.seen: dict[int, tuple[weakref.ref[torch.Tensor], int]] = {}
        self.serial = 0
        self.suspended = False  # off the mode stack while a hooked module runs
        self.depth = 0
        self.busy = False
        self.pending: list[tuple[str, nn.Module, list[tuple[int, int]]]] = []

    def key(self, t: torch.Tensor) -> tuple[int, int]:
        known = self.seen.get(id(t))
        if known is None or known[0]() is not t:
            self.serial += 1
            known = (weakref.ref(t), self.serial)
            self.seen[id(t)] = known
        return (known[1], t._version)

    def keys(self, obj: Any) -> list[tuple[int, int]]:
        leaves, _ = tree_flatten(obj)
        return [self.key(t) for t in leaves if isinstance(t, torch.Tensor)]

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        if self.busy or self.depth > 0 or getattr(func, "__name__", "") == "__get__":
            return func(*args, **kwargs)
        self.busy = True
        ins = self.keys((args, kwargs))
        self.busy = False
        out = func(*args, **kwargs)
        self.busy = True
        if func in _ACTIVATION_FUNCS:  # only an activation's extra arguments are needed later
            self.events.append(_Event("func", func, None, ins, self.keys(out), tuple(args[1:]), kwargs))
        else:
            self.events.append(_Event("func", func, None, ins, self.keys(out)))
        self.busy = False
        return out

    def pre_hook(self, name: str, module: nn.Module, inputs: Any) -> None:
        if self.depth == 0:
            self.busy = True
            self.pending.append((name, module, self.keys(inputs)))
            self.busy = False
            # calls inside a hooked module are not recorded: leave the mode stack until it
            # returns, so they do not each pay a Python call through __torch_function__
            # the flag first: a Ctrl-C between the two finds it set, and _resume reads the
            # stack itself, so the block's exit neither pops an empty stack nor pushes twice
            if _get_current_function_mode() is self:
                self.suspended = True
                _pop_mode()
        self.depth += 1

    def post_hook(self, name: str, module: nn.Module, inputs: Any, output: Any) -> None:
        self.depth -= 1
        if self.depth == 0:
            self._resume()
            self.busy = True
            pname, pmod, ins = self.pending.pop()
            self.events.append(_Event("module", pname, pmod, ins, self.keys(output)))
            self.busy = False

    def _resume(self) -> None:
        """Back on the mode stack after a hooked module, unless already there (a Ctrl-C
        may come between any two steps: the flag is cleared only once the stack holds it)."""
        if self.suspended:
            if _get_current_function_mode() is not self:
                _push_mode(self)
            self.suspended = False

    def __exit__(self, *exc: Any) -> None:
        self._resume()  # a module that raised never reached its post-hook
        super().__exit__(*exc)


class RecordedPass:
    """Records the forward passes run inside its ``with`` block, for :meth:`points`.

    Hooks every leaf module (and every ``Conv2d``) and watches top-level tensor
    functions; the hooks go after any the model already has, so the reductions of
    a :class:`~filtag_kg.activations.FilterProbe` entered before (which run inside
    module hooks) are not taken for consumers of the outputs. Run the pass with
    gradients off but not under ``torch.inference_mode`` (inference tensors have no
    version counter, which tells in-place changes apart). This is how a real batch
    can serve as the dry run: the explanation pass finds the points on its first
    batch and compares them with the profile's, instead of a separate forward pass.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.recorder = _Recorder()
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> RecordedPass:
        rec = self.recorder
        with contextlib.ExitStack() as stack:  # undone at once if a hook cannot be added
            for name, m in self.model.named_modules():
                if next(iter(m.children()), None) is None or isinstance(m, nn.Conv2d):
                    stack.callback(m.register_forward_pre_hook(functools.partial(rec.pre_hook, name)).remove)
                    stack.callback(m.register_forward_hook(functools.partial(rec.post_hook, name)).remove)
            stack.enter_context(rec)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.__exit__(*exc)

    def points(self, layers: Sequence[str], *, measure: str = "activation") -> list[MeasurePoint]:
        """The measure points of ``layers`` as the recorded pass shows them (see
        :func:`find_measure_points`, which this is after its dry run)."""
        return _points_from_events(self.model, layers, self.recorder.events, measure)


def _pure_func_activation(ev: _Event) -> Callable[[torch.Tensor], torch.Tensor]:
    base = _ACTIVATION_FUNCS[ev.target]
    rest = ev.rest
    kwargs = {k: v for k, v in ev.kwargs.items() if k != "inplace"}

    def apply(x: torch.Tensor) -> torch.Tensor:
        return base(x, *rest, **kwargs)

    apply.__name__ = getattr(base, "__name__", "activation")
    return apply


def find_measure_points(
    model: nn.Module,
    layers: Sequence[str],
    example: torch.Tensor,
    *,
    measure: str = "activation",
) -> list[MeasurePoint]:
    """Find where each selected conv layer's filters are measured.

    Args:
        model: the network (TorchScript models are measured at conv outputs only).
        layers: conv layer names (see :func:`filtag_kg.models.select_layers`).
        example: an input batch for the recorded forward pass (1–2 images suffice).
        measure: ``"activation"`` (the method's rule) or ``"conv"`` (force conv outputs).

    Returns:
        One :class:`MeasurePoint` per layer, in the order given.

    Raises:
        UnknownLayerError: a layer is not called exactly once per forward pass.
    """
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), RecordedPass(model) as recorded:
            model(example)
    finally:
        model.train(was_training)
    return recorded.points(layers, measure=measure)


def _points_from_events(
    model: nn.Module, layers: Sequence[str], events: list[_Event], measure: str
) -> list[MeasurePoint]:
    modules = dict(model.named_modules())
    widths = {n: int(getattr(modules[n], "out_channels", 0)) for n in layers}
    calls: dict[str, list[int]] = {}
    consumers: dict[tuple[int, int], list[int]] = {}
    for i, ev in enumerate(events):
        if ev.kind == "module":
            calls.setdefault(ev.target, []).append(i)
        for k in ev.ins:
            consumers.setdefault(k, []).append(i)

    points = []
    for name in layers:
        idx = calls.get(name, [])
        if len(idx) != 1:
            raise UnknownLayerError(
                f"layer {name!r} runs {len(idx)} times in one forward pass; FilTag measures a "
                "filter once per image, so leave it out with --layers"
            )
        i = idx[0]
        point = MeasurePoint(name, widths[name], name, "conv")
        if measure == "conv":
            points.append(point)
            continue
        key = events[i].outs[0] if events[i].outs else None
        hook_name, through = name, []
        while key is not None:
            nxt = next((j for j in consumers.get(key, ()) if j > i), None)
            if nxt is None:
                break
            ev = events[nxt]
            first_in = ev.ins[0] if ev.ins else None
            if ev.kind == "module" and isinstance(ev.module, nn.modules.batchnorm._BatchNorm):
                if first_in != key or not ev.outs:
                    break
                hook_name, key, i = ev.target, ev.outs[0], nxt
                through.append(ev.target)
                if len(calls[hook_name]) != 1:
                    break  # a shared BatchNorm: measure at the conv output
                continue
            if first_in != key:
                break
            if ev.kind == "module" and isinstance(ev.module, _ACTIVATION_MODULES):
                n_calls = calls[ev.target]
                point = MeasurePoint(
                    name, widths[name], ev.target, "activation", type(ev.module).__name__,
                    through, None, n_calls.index(nxt), len(n_calls),
                )
            elif ev.kind == "func" and ev.target in _ACTIVATION_FUNCS:
                point = MeasurePoint(
                    name, widths[name], hook_name, "activation",
                    getattr(ev.target, "__name__", str(ev.target)).rstrip("_"), through,
                    _pure_func_activation(ev),
                )
            break
        points.append(point)
    return points


def plan_measurement(
    model: nn.Module, layers: Sequence[str], example: torch.Tensor, *, measure: str = "activation"
) -> tuple[nn.Module, list[MeasurePoint]]:
    """Measure points for any model: hooks for eager modules, graph probes for TorchScript.

    Returns:
        The module to run (a probed fx graph for TorchScript, else ``model``
        itself) and one :class:`MeasurePoint` per layer.
    """
    if isinstance(model, torch.jit.ScriptModule):
        from .torchscript import instrument_torchscript

        # a batch of two, so the converted graph keeps the batch dimension dynamic
        return instrument_torchscript(model, layers, example.repeat(2, 1, 1, 1), measure=measure)
    return model, find_measure_points(model, layers, example, measure=measure)
