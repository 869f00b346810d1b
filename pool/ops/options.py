"""What the `selfheal` commands share: the error guard, the options that pick a pool, printing.

Every user mistake (a `UsageError`) ends in one line on stderr and exit code 2; any other
`SelfhealError` in one line and exit code 1.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from agents.errors import SelfhealError, UsageError


def guard(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except UsageError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except SelfhealError as exc:
        click.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)


JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
ADDRESS = click.option("--address", envvar="RAY_ADDRESS",
                       help="Ray cluster address (default: $RAY_ADDRESS, else the running one).")
NAMESPACE = click.option("--namespace", default="selfheal", show_default=True,
                         help="Prefix of the pools' Ray namespaces (config pool.namespace).")
RUN = click.option("--run", help="The run whose pool to use (`selfheal runs` lists them); "
                                 "default: the only live run.")


def pool_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--address, --namespace and --run: the pool a command attaches to."""
    return ADDRESS(NAMESPACE(RUN(fn)))


def show(data: Any, view: Callable[[Any], Any], as_json: bool) -> None:
    """`data` as indented JSON, or as the rich `view` of it."""
    import json

    from rich.console import Console

    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        Console().print(view(data))
