"""``deepguard protect -q`` prints nothing but errors, Ray's own notices included; Ray's
token notice is dropped even without ``-q`` (deepguard keeps token authentication on)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

#: what `deepguard protect` sets up before it joins Ray, then the notice Ray prints when it
#: turns token authentication on (its own helper, called by cluster.connect)
_SCRIPT = """
import logging, sys
from deepguard.cli import _log_level, build_parser
args = build_parser().parse_args(["protect", "clip.mp4", *sys.argv[1:]])
logging.basicConfig(level=_log_level(args))
from deepguard.pipeline.cluster import match_ray_log_level, present_token_if_available
match_ray_log_level()
present_token_if_available()
"""


@pytest.mark.parametrize("flags", [["-q"], []])
def test_rays_token_notice_is_not_printed(flags: list[str]) -> None:
    env = {**os.environ, "RAY_AUTH_TOKEN": "0" * 32}
    env.pop("RAY_AUTH_MODE", None)
    result = subprocess.run([sys.executable, "-c", _SCRIPT, *flags], env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Token authentication is enabled" not in result.stderr, result.stderr
    if flags:
        assert result.stderr == ""
