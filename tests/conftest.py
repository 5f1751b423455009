import sys
from pathlib import Path

# Tests import the entrypoint package from the checkout (no install step needed).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
