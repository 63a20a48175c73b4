"""Named option sets a command ships (`--preset NAME`): YAML files in the command's package,
`llmslim/<command>/presets/<name>.yaml`. Each file opens with the exact command it stands for and
says where its numbers come from; its keys are the command's option names. Options typed on the
command line win over the preset, so `--preset X --ratio 0.5` is X at 50%.
"""

from __future__ import annotations

import difflib
from importlib import resources

from llmslim.core.errors import BadOptionError


def available(package: str) -> list[str]:
    """Preset names of `package` (e.g. "llmslim.prune"), sorted."""
    folder = resources.files(package) / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml")) if folder.is_dir() else []


def load_preset(package: str, name: str, fields: set[str]) -> dict:
    """The preset's option values, keyed by field name (dashes become underscores). An unknown
    preset or a key that is not one of `fields` is a BadOptionError (before any model loads)."""
    import yaml

    names = available(package)
    if name not in names:
        near = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        raise BadOptionError(f"unknown preset {name!r}" + (f"; did you mean {', '.join(near)}?" if near else "")
                             + f"; presets: {', '.join(names) or 'none'}")
    text = (resources.files(package) / "presets" / f"{name}.yaml").read_text()
    values = yaml.safe_load(text) or {}
    if not isinstance(values, dict):
        raise BadOptionError(f"preset {name!r} is not a mapping of option names to values")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise BadOptionError(f"preset {name!r} sets unknown options: {', '.join(unknown)}")
    return values


def typed_on_command_line(ctx) -> set[str]:
    """Parameter names the user gave (command line or environment), not left at their default."""
    return {name for name in ctx.params if (src := ctx.get_parameter_source(name)) is not None and src.name != "DEFAULT"}


def apply_preset(values: dict, package: str, name: str | None, typed: set[str], fields: set[str]) -> dict:
    """`values` (a command's options) with preset `name`'s values for the options not in `typed`."""
    if not name:
        return values
    preset = load_preset(package, name, fields)
    return values | {k: v for k, v in preset.items() if k not in typed}
