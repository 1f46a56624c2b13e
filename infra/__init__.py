"""runner-scaler infrastructure: a CDK v2 app (app.py), its IAM grants (policy.py) and Lambda packaging."""
