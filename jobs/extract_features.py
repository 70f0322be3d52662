"""Feature extraction job: archive -> frozen-encoder features (Parquet). Thin: parse config, call one function.

    ray job submit --working-dir . -- python jobs/extract_features.py --config jobs/configs/extract_features.yaml
"""

import sys

from ray_emer.cli import main

if __name__ == "__main__":
    sys.exit(main(["extract", *sys.argv[1:]]))
