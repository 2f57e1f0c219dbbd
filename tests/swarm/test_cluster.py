"""The test cluster itself: what the other swarm tests stand on, and that it leaves nothing behind."""

from swarm.cluster import ADDRESS_POOL, Cluster, NodeSpec, fake_uuid


def test_nodes_are_hosts_of_their_own_with_fake_gpus_and_nothing_is_left(make_cluster):
    cluster = make_cluster(
        [NodeSpec("manager-1", manager=True), NodeSpec("gpu-1", gpus=(("GPU-H200", fake_uuid(1, 0)),))]
    )
    print(f"two-node cluster started in {cluster.started_in} s")
    manager = cluster.manager.client()
    nodes = {n.attrs["Description"]["Hostname"]: n.attrs for n in manager.nodes.list()}
    assert set(nodes) == {"manager-1", "gpu-1"}
    assert all(n["Status"]["State"] == "ready" for n in nodes.values())
    assert nodes["gpu-1"]["Description"]["Resources"]["GenericResources"] == [
        {"NamedResourceSpec": {"Kind": "GPU-H200", "Value": fake_uuid(1, 0)}}
    ]
    # Swarm's own subnets (the ingress network) come from the pool we gave it, not a private range
    ingress = manager.networks.get("ingress").attrs["IPAM"]["Config"][0]["Subnet"]
    assert ingress.startswith("198.18.1") and ADDRESS_POOL == "198.18.128.0/17"
    assert "gpuenv-test-kernel:latest" in cluster.node("gpu-1").client().images.get("gpuenv-test-kernel:latest").tags

    cluster.close()
    assert cluster.leftovers() == []


def test_close_after_a_killed_engine_with_a_running_container_leaves_nothing(make_cluster):
    cluster: Cluster = make_cluster([NodeSpec("manager-1", manager=True)])
    engine = cluster.manager.client()
    engine.containers.run("gpuenv-test-kernel:latest", ["sleep", "600"], detach=True, network_mode="none")
    cluster.manager.kill_engine()  # the container outlives its engine, as on a host whose dockerd crashed
    cluster.close()
    assert cluster.leftovers() == []
