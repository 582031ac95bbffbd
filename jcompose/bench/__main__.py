"""`python -m jcompose.bench ...`: see `jcompose.bench.commands`."""

import sys

from jcompose import cli
from jcompose.bench.commands import main

sys.exit(cli.run(main))
