"""The swarm tests' fixtures: a cluster for the session, and one of a test's own for tests that break it."""

import os
import shutil

import pytest

from swarm.cluster import Cluster


def _needs_root_and_docker():
    if os.geteuid() != 0 or not shutil.which("dockerd") or not shutil.which("nsenter"):
        if os.environ.get("CI"):
            pytest.fail("the swarm tests need root, dockerd and nsenter in CI")
        pytest.skip("the swarm tests need root, dockerd and nsenter (bash .ci/test.sh sets them up)")


@pytest.fixture(scope="session")
def swarm():
    """One manager (takes CPU kernels), gpu-1 with two fake H200s, gpu-2 with one; shared by the session's
    tests, which remove what they create."""
    _needs_root_and_docker()
    cluster = Cluster.start()
    try:
        print(f"swarm started in {cluster.started_in} s")
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def make_cluster():
    """Clusters of a test's own (to kill a node, or register a runtime), closed after the test."""
    _needs_root_and_docker()
    made = []

    def make(specs, **kwargs):
        made.append(Cluster.start(specs, **kwargs))
        return made[-1]

    yield make
    for cluster in made:
        cluster.close()
