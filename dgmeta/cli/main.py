"""The `dgmeta` command. Each sub-command lives in its own module with a ``register(app)``.

User mistakes (:class:`dgmeta.errors.DgmetaError`) end as one line on stderr and a non-zero
exit code, never as a traceback.
"""

from __future__ import annotations

import importlib
import os
import sys

from dgmeta.process import tune_process

tune_process(sys.argv[1:])  # the command is the entry point: before any import loads torch

import typer  # noqa: E402
from typer.core import TyperCommand, TyperGroup  # noqa: E402

from dgmeta.cli.environment import environment_errors  # noqa: E402
from dgmeta.errors import DgmetaError  # noqa: E402


def _flags_without_type(params: list) -> list:
    """Typer shows every boolean as ``<bool>`` as if it took a value; Click shows a flag by its name only."""
    for param in params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
    return params


class FlagCommand(TyperCommand):
    def get_params(self, ctx):
        return _flags_without_type(super().get_params(ctx))


class FlagGroup(TyperGroup):
    def get_params(self, ctx):
        return _flags_without_type(super().get_params(ctx))


app = typer.Typer(
    name="dgmeta",
    cls=FlagGroup,
    help="Domain generalization / adaptation with meta-learning: train, evaluate, compare, retrain.",
    epilog="Examples: dgmeta run pacs-mini --base erm --steps 10 | dgmeta compare --against base=erm | dgmeta COMMAND --help",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"show_default": True},
)


def _version(value: bool) -> None:
    if value:
        from dgmeta import __version__

        typer.echo(f"dgmeta {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version and exit"),
) -> None:
    """Domain generalization / adaptation with meta-learning: train, evaluate, compare, retrain."""

COMMAND_MODULES = (
    "dgmeta.cli.run_cmd",
    "dgmeta.cli.data_cmd",
    "dgmeta.cli.fewshot_cmd",
    "dgmeta.cli.compare_cmd",
    "dgmeta.cli.sweep_cmd",
    "dgmeta.cli.retrain_cmd",
    "dgmeta.cli.schedule_cmd",
)

for _module in COMMAND_MODULES:
    try:
        importlib.import_module(_module).register(app)
    except ModuleNotFoundError as _exc:  # a command still being written must not break the others
        if _exc.name != _module:
            raise


def _use_flag_classes(typer_app: typer.Typer) -> None:
    for command in typer_app.registered_commands:
        if command.cls in (None, TyperCommand):
            command.cls = FlagCommand
    for group in typer_app.registered_groups:
        group.typer_instance.info.cls = FlagGroup
        group.typer_instance.info.context_settings = {"show_default": True, **(group.typer_instance.info.context_settings or {})}
        _use_flag_classes(group.typer_instance)


_use_flag_classes(app)


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    try:
        with environment_errors():
            app(args=argv, standalone_mode=False)
    except DgmetaError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        if isinstance(exc, _click_types("ClickException")):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, _click_types("Abort")):
            print("error: aborted", file=sys.stderr)
            sys.exit(1)
        raise


def _click_types(name: str) -> tuple[type, ...]:
    """``click.exceptions.<name>`` and typer's vendored copy (typer >= 0.20 ships its own click)."""
    import click

    types = [getattr(click.exceptions, name)]
    try:
        from typer._click import exceptions as vendored

        types.append(getattr(vendored, name))
    except (ImportError, AttributeError):
        pass
    return tuple(types)


if __name__ == "__main__":
    main()
