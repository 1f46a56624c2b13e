"""Off-Lambda tools: the `runner-scaler` operator CLI, config migration and status, and the dev tools (fake
GitLab, local AWS, demo, replay). Lambda never runs this package: it is installed into the virtualenv, never
bundled (Chalice packages `app.py` and `chalicelib/` only).
"""
