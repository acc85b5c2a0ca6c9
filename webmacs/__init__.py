"""WebMACS: lab telemetry server on Tornado and TimescaleDB."""

from pathlib import Path

__version__ = "0.1.0"

# The dashboard page and its assets, served from the installed package.
STATIC_DIR = Path(__file__).resolve().parent / "static"
