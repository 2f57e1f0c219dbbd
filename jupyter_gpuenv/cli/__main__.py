"""`python -m jupyter_gpuenv.cli`: the `jupyter gpuenv` command."""

import sys

from jupyter_gpuenv.cli.main import main

sys.exit(main())
