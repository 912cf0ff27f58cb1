"""X/Y/Z plot engine: axis value parsing, the axis table, cell planning and the annotated grid (no UI)."""
