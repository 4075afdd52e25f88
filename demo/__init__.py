"""Demo logic behind `make demo`, `make demo-cls` and `make demo-int8` (tools/demo*.py)."""
