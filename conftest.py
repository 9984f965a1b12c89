"""Test-wide settings: never touch the network, and run notebooks in their smoke mode (tiny, fast)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("MINIDALLE2_SMOKE", "1")
