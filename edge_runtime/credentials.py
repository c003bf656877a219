"""user:password for a stream or a broker, from a file or the environment: never on the command line
(where ``ps`` shows it) and never in a config that is shared. The one rule for every secret the daemon reads."""
from __future__ import annotations

import os
from pathlib import Path

SOURCE_ENV = "FER_EDGE_SOURCE_CREDENTIALS"
MQTT_ENV = "FER_EDGE_MQTT_CREDENTIALS"


class CredentialsError(ValueError):
    pass


def read_credentials(path: str, env: str, what: str) -> tuple[str, str] | None:
    """(user, password) from the first line ``user:password`` of ``path``, else from $``env``; None when
    neither is given. ``what`` names the setting in the error (e.g. "mqtt.credentials_file")."""
    if path:
        try:
            # a BOM (Windows editors) is not part of the user name; spaces in a password are kept
            line = Path(path).read_text(encoding="utf-8-sig").splitlines()[0].rstrip("\r\n")
        except (OSError, IndexError, UnicodeDecodeError) as e:
            raise CredentialsError(f"{what} {path}: cannot read user:password ({type(e).__name__})") from None
    else:
        line = os.environ.get(env, "")
    if not line:
        return None
    user, sep, password = line.partition(":")
    if not sep or not user:
        raise CredentialsError(f"{what}: expected user:password on its first line" if path else
                               f"${env}: expected user:password")
    return user, password
