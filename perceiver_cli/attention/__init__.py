"""Cross-attention maps, as `perceiver attention` shows them: measured (stats.py), drawn (render.py),
chosen or captured now (views.py). Capturing them (during training too) is engine/capture.py's."""
