import typer

app = typer.Typer(help="Structured pruning of FFN neurons (in progress).")
