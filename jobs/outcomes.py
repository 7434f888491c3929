"""Entry point of `segmentation outcomes` for spark-submit and Databricks tasks: the code is the
installed `segmentation` package; this script only passes its arguments on."""

import sys

from segmentation.cli import main

if __name__ == "__main__":
    sys.exit(main(["outcomes", *sys.argv[1:]]))
