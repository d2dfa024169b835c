"""lstm_cell: every backend against the float64 reference (outputs and all gradients), the drop-in module,
determinism and bad input. The machinery lives in cells.py and harness.py."""
import pytest

from cells import check_bad_inputs, check_cell, check_deterministic, check_module, parametrize_cells

KINDS = ("lstm",)
_kind, _backend, _shape = parametrize_cells(KINDS)


@_kind
@_backend
@_shape
def test_against_reference(kind, backend, device, dtype, B, I, H, variant):
    check_cell(kind, backend, device, dtype, B, I, H, variant)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_module_is_drop_in(kind, backend):
    check_module(kind, backend)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_backward_is_deterministic(kind, backend):
    check_deterministic(kind, backend)


@pytest.mark.parametrize("kind", KINDS)
def test_bad_input(kind):
    check_bad_inputs(kind)
