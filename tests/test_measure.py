"""The recorded pass (filtag_kg.measure.RecordedPass) under Ctrl-C."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from tiny_models import build_module_act
from torch.overrides import _get_current_function_mode, _pop_mode

import filtag_kg.measure as measure


def _interrupting_once(real: Callable[..., Any]) -> Callable[..., Any]:
    """``real`` that raises KeyboardInterrupt right after acting, the first time only: a
    Ctrl-C that lands between the mode-stack change and the flag that tells of it."""
    calls = [0]

    def once(*args: Any) -> Any:
        out = real(*args)
        calls[0] += 1
        if calls[0] == 1:
            raise KeyboardInterrupt
        return out

    return once


@pytest.mark.parametrize("where", ["_pop_mode", "_push_mode"])
def test_ctrl_c_beside_the_mode_stack_change_leaves_the_stack_as_found(
    where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recorder leaves the function-mode stack while a hooked module runs and returns
    after it. A Ctrl-C right after leaving once made the block's exit pop an empty stack (a
    RuntimeError in place of the KeyboardInterrupt); right after returning, the exit pushed
    the recorder a second time and left it on the stack."""
    monkeypatch.setattr(measure, where, _interrupting_once(getattr(measure, where)))
    model = build_module_act()
    try:
        with pytest.raises(KeyboardInterrupt), torch.no_grad(), measure.RecordedPass(model):
            model(torch.zeros(1, 3, 8, 8))
        assert _get_current_function_mode() is None
    finally:
        while _get_current_function_mode() is not None:  # what a failure left behind
            _pop_mode()
    monkeypatch.undo()
    points = measure.find_measure_points(model, ["conv1"], torch.zeros(1, 3, 8, 8))
    assert [p.describe() for p in points] == ["relu1 (ReLU)"]
