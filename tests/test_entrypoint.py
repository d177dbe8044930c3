"""The image's entrypoint, run by bash on this machine for the cases that end before any user is
made (the container tests run the rest inside the image)."""

import os
import subprocess

import pytest

from tests.conftest import ROOT

ENTRYPOINT = ROOT / "containers" / "entrypoint.sh"


def run(**ids: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("USER_ID", "GROUP_ID")} | ids
    return subprocess.run(["bash", str(ENTRYPOINT), "id", "-u"], env=env, capture_output=True, text=True)


@pytest.mark.parametrize("ids", [{"USER_ID": "00"}, {"USER_ID": "0", "GROUP_ID": "000"}])
def test_root_spelled_any_way_runs_the_command_as_it_is(ids):
    """Issue 9, reproduction 8: USER_ID=00 passed the root check and created /home/root."""
    result = run(**ids)
    assert result.returncode == 0 and result.stdout.strip() == str(os.getuid())


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ({"USER_ID": "00", "GROUP_ID": "5"}, "USER_ID=0 runs as root, which keeps root's group"),
        ({"USER_ID": "0", "GROUP_ID": "1000"}, "unset GROUP_ID (got '1000')"),
        ({"USER_ID": "x1", "GROUP_ID": "1"}, "USER_ID must be a numeric id (got 'x1')"),
        ({"USER_ID": "1000"}, "GROUP_ID must be a numeric id (got '')"),
        ({"USER_ID": "1000", "GROUP_ID": "1;id"}, "GROUP_ID must be a numeric id (got '1;id')"),
    ],
)
def test_ids_it_cannot_honour_are_refused_in_one_line(ids, message):
    result = run(**ids)
    assert result.returncode == 2 and message in result.stderr and result.stdout == ""
