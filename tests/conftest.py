"""Runs that several test modules read (each costs seconds of model time on
2 cores, and the suite has a 15-minute budget): made once per session."""
import pytest


@pytest.fixture(scope="session")
def flow_tiny_run(tmp_path_factory):
    """analyses.flow on the tiny model with pathways and the lens
    (test_flow.TINY_ARGS) -> (results, file). Its users only read it."""
    from analyses import flow
    from test_flow import TINY_ARGS, TINY_PATHWAYS

    out = tmp_path_factory.mktemp("flow") / "flow-tiny.h5"
    res = flow.main(TINY_ARGS + ["--pathways", TINY_PATHWAYS, "--random-seeds", "2", "--lens", "--out", str(out)])
    return res, out
