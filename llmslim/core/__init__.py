"""The shared layer every subcommand stands on: loading, architecture, data, generation, reporting."""
