"""Labelling job: features or an archive -> descriptions, labels, sentiment (Parquet + published CSVs).
Thin: parse config, call one function.

    ray job submit --working-dir . -- python jobs/label_archive.py --config jobs/configs/label_archive.yaml \
        --input FEATURES --checkpoint STAGE2 --output LABELS
"""

import sys

from ray_emer.cli import main

if __name__ == "__main__":
    sys.exit(main(["label", *sys.argv[1:]]))
