"""Where this checkout is: the folder that holds hello/, config.yaml, monitoring/ and the commands."""

from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]
