"""Entry point of `segmentation report` for spark-submit and Databricks tasks: the code is the
installed `segmentation` package; this script only passes its arguments on."""

import sys

from segmentation.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
