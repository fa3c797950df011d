"""The lowest layer: what `models`, `metrics` and `bench` share (the error type and the names of families and
datasets). It imports none of them, so each may depend on it."""
