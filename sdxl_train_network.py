"""Drop-in for sd-scripts' script name: `accelerate launch sdxl_train_network.py <sd-scripts flags>` keeps working."""

import sys

from sdxl_lora.cli import main

if __name__ == "__main__":
    sys.exit(main())
