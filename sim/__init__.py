"""Discrete-event simulator: replays CI job traces against our reconciler and the anchors' scalers.

Imports chalicelib and the standard library (matplotlib only in `sim.plot`); never builds a boto3 client.
"""

from __future__ import annotations
