from .perceiver import Perceiver, PerceiverOutput, build_model, count_parameters

__all__ = ["Perceiver", "PerceiverOutput", "build_model", "count_parameters"]
