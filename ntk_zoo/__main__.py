"""`python -m ntk_zoo`: the `ntk-zoo` command (see `ntk_zoo.cli`); with no arguments, `ntk-zoo ntk`."""

import sys

from ntk_zoo.cli import main

if __name__ == "__main__":
  sys.exit(main())
