"""Quickstart job: archives -> features -> two stages -> labels -> scores -> report. Thin: parse config, call one function.

    ray job submit --working-dir . -- python jobs/quickstart.py --config jobs/configs/quickstart.yaml
"""

import sys

from ray_emer.cli import main

if __name__ == "__main__":
    sys.exit(main(["quickstart", *sys.argv[1:]]))
