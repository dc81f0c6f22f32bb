"""``monmouth demo``: the click command, added to ``monmouth``'s command line through the ``monmouth.commands``
entry point (``demo = "monmouth_demo.command:register"``)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from monmouth.errors import MonmouthError


@click.command()
@click.option("--dir", "workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("monmouth-demo"),
              show_default=True, help="Where the demo's config, database and artifacts go (its database is reset).")
@click.option("--port", type=int, default=8080, show_default=True, help="HTTP port of the sidecar (0: any free).")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds (default: Ctrl-C).")
@click.option("--reorg-every", type=int, default=30, show_default=True, help="anvil_reorg every N blocks (0: never).")
@click.option("--rate", type=float, default=4.0, show_default=True, help="Traffic actions per second.")
def demo(workdir: Path, port: int, duration: float | None, reorg_every: int, rate: float) -> None:
    """Run everything on a local anvil chain: real contracts (OpenZeppelin ERC-20s, Uniswap V2), agents, traffic
    with reorgs, and the sidecar with RAG, memory, the dashboard and MCP. Ctrl-C stops it cleanly."""
    from . import run_demo

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_demo(workdir, port=port, duration=duration, reorg_every=reorg_every, rate=rate)
    except MonmouthError as e:
        raise click.ClickException(str(e)) from e


def register(cli: click.Group) -> None:
    """Add ``demo`` to ``cli`` (the ``monmouth`` command group)."""
    cli.add_command(demo)
