"""lstm_cell: every backend against the float64 reference (outputs and all gradients), the drop-in module,
determinism and bad input; the tests themselves are in cells.py, shared by the three cells."""
from cells import make_tests

globals().update(make_tests(("lstm",)))
