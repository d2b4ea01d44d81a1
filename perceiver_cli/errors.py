"""The one error type a user can cause: shown as a single line on stderr, exit code 2."""


class UserError(Exception):
    """Bad input from the user (file, key, value). The message names it and says what to do."""

    exit_code = 2


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is an allocation that did not fit: Python's, torch's CPU or CUDA allocator's."""
    if isinstance(exc, MemoryError):
        return True
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text)
