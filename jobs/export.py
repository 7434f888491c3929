"""Entry point of `segmentation export` for spark-submit and Databricks tasks: the code is the
installed `segmentation` package; this script only passes its arguments on."""

import sys

from segmentation.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
