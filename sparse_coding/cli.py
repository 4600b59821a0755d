"""The one wrapper every script runs through: `--config`, logging, clean errors.

The scripts import the heavy modules (torch, transformers) inside their
`main`, after parsing, so `--help` answers at once.

User-fixable problems (`SparseCodingError`, and a full disk, read-only mount
or missing permission) become one paragraph on stderr and exit status 1;
anything else is a bug and keeps its traceback.
"""

import argparse
import errno
import logging
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from typing import NoReturn

from sparse_coding.config import DEFAULT_CONFIG_PATH, Config, load_config
from sparse_coding.errors import SparseCodingError

logger = logging.getLogger("sparse_coding")

# OSErrors that come from the machine, not from a bug: a full disk or quota,
# a read-only mount, missing permissions. Any other OSError keeps its traceback.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def build_parser(
    description: str,
    *,
    outputs: Sequence[str] = (),
    keys: Sequence[str] = (),
    section: str | None = None,
) -> argparse.ArgumentParser:
    """An argument parser with the `--config PATH` and `-q` every script takes.

    Args:
        outputs: what the script writes, shown under --help.
        keys: the config keys that shape its result, shown under --help.
        section: the README section that explains it.
    """
    epilog = [
        f"writes (under DATA_DIR/<model>/): {', '.join(outputs)}" if outputs else "",
        f"config keys that matter: {', '.join(keys)}" if keys else "",
        f'README: section "{section}"' if section else "",
    ]
    parser = argparse.ArgumentParser(
        description=description,
        epilog="\n".join(textwrap.fill(line, 79, subsequent_indent="  ") for line in epilog if line) or None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", default=str(DEFAULT_CONFIG_PATH), help=f"YAML config (default: {DEFAULT_CONFIG_PATH})"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only, no progress bars")
    return parser


def run_script(
    main: Callable[[Config, argparse.Namespace], None],
    description: str,
    argv: Sequence[str] | None = None,
    parser: argparse.ArgumentParser | None = None,
) -> None:
    """Parse arguments, load the config, run `main`; exit 1 with a message on user errors."""
    parser = parser or build_parser(description)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    start = time.perf_counter()
    try:
        main(load_config(args.config), args)
    except SparseCodingError as e:
        _fail(str(e))
    except OSError as e:
        if e.errno not in ENVIRONMENT_ERRNOS:
            raise
        _fail(
            f"{e.filename or 'a file'}: {e.strerror}; files already there were left as they were. "
            f"Free space or set DATA_DIR to a folder you can write"
        )
    except KeyboardInterrupt:
        print("interrupted; existing graph files were left as they were", file=sys.stderr)
        sys.exit(130)
    logger.info("Done in %.1fs", time.perf_counter() - start)


def _fail(message: str) -> NoReturn:
    """One paragraph on stderr, exit status 1."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(1)
