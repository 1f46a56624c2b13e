"""runner-scaler's Chalice app: event in -> model -> one call into chalicelib -> response.

No logic and no boto3 here; every handler parses its event, calls one use case, and shapes the answer.
"""

from __future__ import annotations

from chalice import Chalice

app = Chalice(app_name="runner-scaler")


@app.route("/health", methods=["GET"])
def health() -> dict[str, str]:
    """Liveness for load balancers and the demo: no AWS call."""
    return {"status": "ok"}
