"""The `runner-scaler` operator CLI (typer + rich). Never imported by app.py or the Lambda path."""
