"""WebMACS: lab telemetry server on Tornado and TimescaleDB."""

__version__ = "0.1.0"
