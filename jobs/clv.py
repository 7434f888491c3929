"""Entry point of `segmentation clv` for spark-submit and Databricks tasks: the code is the
installed `segmentation` package; this script only passes its arguments on."""

import sys

from segmentation.cli import main

if __name__ == "__main__":
    sys.exit(main(["clv", *sys.argv[1:]]))
