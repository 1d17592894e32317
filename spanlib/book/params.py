"""``python -m spanlib params PRESET``: a preset's papermill parameters, as YAML for ``papermill -f``.

The parameters live in the ``notebook`` section of ``spanlib/presets/<preset>.yaml``::

    python -m spanlib params smoke > smoke.yaml
    jupytext --to ipynb --output - notebooks/08_performance.md | papermill - out.ipynb -f smoke.yaml

``python -m spanlib sweep --preset NAME`` passes the same parameters to every combination.
"""

from __future__ import annotations

import argparse

import yaml

from spanlib.core.configs import preset_names
from spanlib.core.presets import notebook_parameters


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("preset", choices=preset_names(), help="the preset whose notebook parameters to print")


def run(args: argparse.Namespace) -> int:
    print(yaml.safe_dump(notebook_parameters(args.preset), sort_keys=False), end="")
    return 0
