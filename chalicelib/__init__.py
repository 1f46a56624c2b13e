"""runner-scaler: the library behind the Chalice app (handlers live in app.py)."""
