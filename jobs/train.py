"""Training job: one AffectGPT stage with Ray Train + FSDP2. Thin: parse config, call one function.

    ray job submit --working-dir . -- python jobs/train.py --config jobs/configs/stage1_coarse.yaml \
        --features FEATURES --output STAGE1
"""

import sys

from ray_emer.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
