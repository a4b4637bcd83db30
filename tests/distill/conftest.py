"""Make the shared tiny-model helpers (_amused_tiny.py) importable under --import-mode=importlib."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
