"""What segops' command lines (segops.train, segops.eval, segops.predict) share: their usage error, how they report
it, and their default device."""

import sys
from typing import Callable

import torch
import torch.distributed as dist

from segops.data import FolderError


class UsageError(Exception):
    """A command line that cannot run as given (printed as ``PROG: error: MESSAGE``, exit status 2)."""


class CheckpointError(ValueError):
    """A file that is not a checkpoint segops.train wrote (segops.train.load_checkpoint)."""


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def run_command(prog: str, command: Callable, args) -> int:
    """Runs command(args); a FolderError, UsageError or CheckpointError prints ``PROG: error: MESSAGE`` on stderr
    (no traceback) and exits with status 2, as argparse does with a bad option. A data-parallel process group is
    closed either way."""
    try:
        command(args)
    except (FolderError, UsageError, CheckpointError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0
