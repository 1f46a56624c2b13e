"""Discrete-event simulator: drives the real capacity engine and reconciler on job traces, beside baselines.

Imports chalicelib (engine, reconciler, store twin, routing), the standard library, and matplotlib only in
`sim.plot`. No boto3 client is ever built here: every AWS and GitLab call goes to an in-memory fake.
"""

from __future__ import annotations
