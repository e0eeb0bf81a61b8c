"""The study's keys from one organiser secret, ``STUDY_SECRET`` (a Space secret), when it is set.

A study needs three stable secrets: the plan's seed, the key of the page session tokens and the key of the
participant id kept in the browser. Without ``STUDY_SECRET`` each is a random file in the study's data folder
(made on first start). With it, each is derived from it (HMAC-SHA256 of the key's name), so nothing secret is
written to disk or to a repo, and a restart on an empty data folder (a free Space's disk is wiped on restart) keeps
the plan, the pages' sessions and the participants' ids working.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from typing import Mapping

SECRET_ENV = "STUDY_SECRET"
MIN_SECRET_LENGTH = 16


def derived_key(name: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """The key ``name`` derived from ``STUDY_SECRET``, or None when it is not set."""
    secret = environ.get(SECRET_ENV, "").strip()
    if not secret:
        return None
    if len(secret) < MIN_SECRET_LENGTH:
        from .protocol import StudySetupError
        raise StudySetupError(f"{SECRET_ENV} is too short ({len(secret)} characters): use a random value of at "
                              f"least {MIN_SECRET_LENGTH}, e.g. `python -c \"import secrets; "
                              "print(secrets.token_hex(32))\"`.")
    return hmac.new(secret.encode(), name.encode(), hashlib.sha256).hexdigest()
