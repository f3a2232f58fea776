"""`kpi crypto ...` commands (thin wiring; heavy imports happen inside each command)."""

from __future__ import annotations

import typer

app = typer.Typer(help="The crypto workflow.", no_args_is_help=True)
