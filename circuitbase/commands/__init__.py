"""One module per CLI command group; each exposes a typer app or command functions."""
