"""The root `llmslim` app: one add_typer/command line per subcommand, one error handler."""

from __future__ import annotations

import os
import sys

import typer

from llmslim.core import distributed
from llmslim.core.errors import LlmslimError

INTERNAL_ERROR = 2  # exit code of an unexpected exception; 1 is bad input

app = typer.Typer(
    name="llmslim",
    help="Make large language models cheaper to run: prune, recover, shorten, budget, sparsity, diffuse, eval, bench.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    from llmslim.bench.cli import bench
    from llmslim.budget.cli import budget_app
    from llmslim.diffuse.cli import app as diffuse_app
    from llmslim.eval.cli import eval_command
    from llmslim.info.cli import info
    from llmslim.prune.cli import prune
    from llmslim.recover.cli import recover
    from llmslim.shorten.cli import app as shorten_app
    from llmslim.sparsity.cli import app as sparsity_app

    app.command("info")(info)
    app.command("eval")(eval_command)
    app.command("bench")(bench)
    app.command("prune")(prune)
    app.command("recover")(recover)
    app.add_typer(shorten_app, name="shorten")
    app.add_typer(budget_app, name="budget")
    app.add_typer(sparsity_app, name="sparsity")
    app.add_typer(diffuse_app, name="diffuse")


def _print_version(value: bool) -> None:
    if value:
        import llmslim

        typer.echo(llmslim.__version__)
        raise typer.Exit()


@app.callback()
def root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks (also LLMSLIM_DEBUG=1)."),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version, help="Print the version and exit."),
) -> None:
    if debug:
        os.environ["LLMSLIM_DEBUG"] = "1"


_register()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: bad input (LlmslimError) ends in one line on stderr and exit code 1;
    anything else is an internal error: a short message, exit code 2."""
    import click

    # typer >= 0.17 raises its own (vendored) click's exceptions; older typer raises click's
    exits = (typer.Exit, click.exceptions.Exit)
    aborts = (typer.Abort, click.exceptions.Abort)
    usage = (getattr(typer, "TyperException", click.ClickException), click.ClickException)
    debug = os.environ.get("LLMSLIM_DEBUG") == "1" or "--debug" in (argv or sys.argv)
    try:
        app(args=argv, standalone_mode=False)
        distributed.finish()
    except exits as done:
        if done.exit_code == 0:
            distributed.finish()
        sys.exit(done.exit_code)
    except aborts:
        sys.stderr.write("aborted\n")
        sys.exit(130)
    except usage as err:  # an unknown option, a missing argument: bad input
        err.show()
        sys.exit(1)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except LlmslimError as err:
        if debug:
            raise
        sys.stderr.write(f"error: {err}\n")
        sys.exit(1)
    except Exception as err:  # noqa: BLE001 - not bad input: a bug of ours or of a library
        if debug:
            raise
        if distributed.is_collective_failure(err):
            from llmslim.core.errors import JobStoppedError

            sys.stderr.write(f"error: {JobStoppedError('a collective failed: another process of this job is gone')}\n")
            sys.exit(1)
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        sys.stderr.write(
            f"internal error: {type(err).__name__}: {first}\n"
            "this is a bug in llmslim or a library, not in your input; run again with --debug for the traceback\n"
        )
        sys.exit(INTERNAL_ERROR)
