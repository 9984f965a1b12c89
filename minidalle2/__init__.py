"""minidalle2: DALL-E 2 / unCLIP (Ramesh et al. 2022) stage by stage, small enough for a laptop CPU."""

__version__ = "0.1.0"
