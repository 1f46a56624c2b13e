"""SSM Parameter Store adapter: reads the deployed config when it lives in a parameter, not a file.

The only module that calls SSM, through `AwsClients`. Imports chalicelib.aws only.
"""

from __future__ import annotations

from chalicelib.aws import AwsClients


def read_parameter(aws: AwsClients, name: str) -> str:
    """The value of parameter `name`, decrypted when it is a SecureString (GetParameter WithDecryption)."""
    return str(aws.call("ssm", "get_parameter", Name=name, WithDecryption=True)["Parameter"]["Value"])
