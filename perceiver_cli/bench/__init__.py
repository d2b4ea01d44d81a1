"""`perceiver bench`: throughput, memory, FLOPs, scaling, and the comparison with lucidrains/perceiver-pytorch."""
