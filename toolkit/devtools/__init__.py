"""Developer tools: local stand-ins and bootstrap for the services runner-scaler talks to.

Used by tests, the simulator and the demo; never imported by `app.py` or any Lambda handler path.
"""
