"""How the CLI shows a failure: a user's mistake is one line on stderr and exit 2 (click's usage errors
included), Ctrl-C a short note and exit 130; --debug shows the traceback instead. Anything else is a
bug and keeps its traceback."""

from __future__ import annotations

import functools
import re
import sys
import threading

import typer

from ..console import err_console, visible
from ..errors import UserError, is_out_of_memory

try:  # typer 0.2x carries its own copy of click, whose exceptions are not click's
    from typer._click import exceptions as click_errors
except ImportError:
    from click import exceptions as click_errors

# what to turn down when a command runs out of memory, by command
MEMORY_KNOBS = {
    "train": "lower train.batch_size, model.num_latents or model.latent_dim, or set train.activation_checkpointing=true",
    "bench": "lower --batch-size or --input-size, or model.num_latents / model.latent_dim (--set)",
    "eval": "lower --batch-size",
    "attention": "capture fewer --samples",
    "prepare": "lower --size (or --points)",
    "predict": "lower --batch-size (or --mask-size)",
    "export": "export on a machine with more memory (the check runs batches of 8)",
}
DEBUG = False
_interrupt_note = None  # set by a command that can say how to continue after Ctrl-C: () -> str


def set_debug(debug: bool) -> None:
    global DEBUG
    DEBUG = debug
    threading.excepthook = _thread_exception


_default_thread_hook = threading.excepthook


def _thread_exception(args) -> None:
    """A library's writer thread (TensorBoard's) that meets a full disk raises it again in the command's
    own thread, which reports it in one line: its traceback from the thread is for --debug only."""
    if DEBUG or not isinstance(args.exc_value, OSError):
        _default_thread_hook(args)


def is_debug() -> bool:
    return DEBUG


def on_interrupt(note) -> None:
    """What Ctrl-C says from now on in this command: note() -> str."""
    global _interrupt_note
    _interrupt_note = note


class OneLineUsageErrors(typer.core.TyperGroup):
    """A mistyped option or value (click's usage errors) is one line on stderr and exit 2, like every
    other mistake, instead of a usage banner and a framed box; `perceiver` alone still shows the help."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        given = list(kwargs.get("args") or (args[0] if args else None) or sys.argv[1:])
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click_errors.ClickException as exc:
            code = exc.exit_code
            if type(exc).__name__ == "NoArgsIsHelpError":  # `perceiver` alone: the help, as before
                exc.show()
            else:
                context = getattr(exc, "ctx", None)
                hint = f" (see `{context.command_path} --help`)" if context is not None else ""
                message = " ".join(exc.format_message().split())
                if isinstance(exc, click_errors.NoSuchOption) and context is not None:
                    recipe_hint = recipe_key_hint(exc.option_name, context, given)
                    if recipe_hint:  # click's "Possible options" guess is beside the point then
                        message, hint = f"No such option: {exc.option_name}", recipe_hint
                err_console.print(f"[bold red]error:[/] {visible(message)}{visible(hint)}", highlight=False, soft_wrap=True)
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


def recipe_key_hint(option: str, context, given: list[str]) -> str | None:
    """`train --epochs 1`: a recipe key spelt as an option; the --set that does it, on commands that take --set."""
    if not any("--set" in getattr(param, "opts", ()) for param in context.command.params):
        return None
    from ..recipe import keys_ending_in

    keys = keys_ending_in(option.lstrip("-").replace("-", "_"))
    if not keys:
        return None
    after = given[given.index(option) + 1:] if option in given else []
    value = after[0] if after and not after[0].startswith("-") else "..."
    return f": recipe values are set with --set, e.g. `{context.command_path} --set {keys[0]}={value}`"


def user_errors(command: str):
    """Decorate a command (named as in MEMORY_KNOBS): turn a user's mistake into one line on stderr and
    exit 2 (a UserError, an OS error on a file, memory that cannot be had); Ctrl-C into a short note
    and exit 130. --debug shows the traceback instead."""

    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            on_interrupt(None)
            try:
                return function(*args, **kwargs)
            except KeyboardInterrupt:
                if DEBUG:
                    raise
                err_console.print(_interrupt_note() if _interrupt_note else "interrupted", highlight=False, soft_wrap=True)
                raise typer.Exit(130) from None
            except Exception as exc:
                message = _user_message(exc, command)
                if message is None or DEBUG:
                    raise
                err_console.print(f"[bold red]error:[/] {visible(message)}", highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None

        return wrapper

    return decorate


def _user_message(exc: Exception, command: str) -> str | None:
    """The one line for an error the user can act on; None for a bug (which keeps its traceback)."""
    from ..atomic import os_error_within

    os_error = os_error_within(exc)
    if isinstance(exc, UserError):
        text = str(exc)
    elif os_error is not None:
        text = _os_error_text(os_error)
    elif is_out_of_memory(exc):
        text = f"out of memory: {_asked_memory(str(exc))}; {MEMORY_KNOBS.get(command, 'ask for less')}"
    else:
        return None
    return " ".join(part.strip() for part in text.splitlines() if part.strip())  # always one line


def _os_error_text(exc: OSError) -> str:
    from ..atomic import os_error_advice

    return f"{exc.filename if exc.filename is not None else 'a file'}: {os_error_advice(exc)}"


def _asked_memory(text: str) -> str:
    """'asked for 25.6 GB at once' from the allocator's message (CPU, CUDA or NumPy)."""
    cpu = re.search(r"tried to allocate (\d+) bytes", text)
    if cpu:
        return f"one allocation of {int(cpu.group(1)) / 1e9:,.1f} GB did not fit"
    other = re.search(r"(?:Tried to|Unable to) allocate ([\d.]+ [KMGTP]i?B)", text)
    return f"one allocation of {other.group(1)} did not fit" if other else "an allocation did not fit"
