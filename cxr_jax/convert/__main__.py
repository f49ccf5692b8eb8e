"""`python -m cxr_jax.convert ...`: runs the converter's command line (see `cli`)."""

import sys

from cxr_jax.convert.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
