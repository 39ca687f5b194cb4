"""An APP whose import fails, for the one-line error test."""

raise RuntimeError("this module fails on import, on purpose")
