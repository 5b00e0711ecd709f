"""`iot-platform`: one entry point for the platform's pieces."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Sequence

import click
from pydantic import ValidationError

from platform_cli import database, lifecycle, services, up

PROG = "iot-platform"

# Every subcommand, in the order `iot-platform --help` lists them. A new one is a click command in
# its module (see platform_cli/__init__.py), added here.
COMMANDS: list[click.Command] = [
    database.db,
    database.migrate,
    services.serve,
    services.writer,
    services.publish,
    services.mqtt,
    up.up,
    database.dbt,
    lifecycle.partitions,
    lifecycle.archive,
    lifecycle.restore,
    lifecycle.replay,
]


class _Listed(click.Group):
    """Lists the subcommands as registered (not alphabetically), each with its whole help line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, command.help or "") for name, command in self.commands.items()])


@click.group(cls=_Listed, help=__doc__, context_settings={"max_content_width": 120, "show_default": True})
def cli() -> None:
    pass


for _command in COMMANDS:
    cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pgserver warns when XDG_RUNTIME_DIR is unset (it falls back to /tmp): not actionable here.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    try:
        # Not click's standalone mode, which exits 0 whatever a command returns: each command
        # returns its exit status.
        result = cli.main(args=list(argv) if argv is not None else None, prog_name=PROG, standalone_mode=False)
    except click.ClickException as exc:  # usage errors: exit 2, as before
        exc.show()
        return exc.exit_code
    except click.Abort:  # Ctrl-C outside a command's own handling
        print("Aborted!", file=sys.stderr)
        return 130
    except ValidationError as exc:
        for error in exc.errors():
            print(f"{PROG}: configuration error: {error['msg']}", file=sys.stderr)
        return 2
    return int(result or 0)
