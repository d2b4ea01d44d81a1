"""Cross-attention maps: capture them from a model (capture.py), measure them (stats.py), draw them (render.py)."""
