"""The GPU API behind a real JupyterHub: served under /user/<name>/, only to its owner, per-user GPUs."""

import time

import fake_pynvml

RECORDED = fake_pynvml.load("h100x2")["devices"]


def gpus(hub, user, token):
    """alice's (or bob's) GPU API, once the server's sampler has published a sample."""
    deadline = time.monotonic() + 20
    while True:
        r = hub.request("GET", f"/user/{user}/gpuenv/api/gpus", token=token)
        assert r.status_code == 200, (r.status_code, r.text[:300])
        body = r.json()
        if body["available"]:
            return body
        assert time.monotonic() < deadline, f"{user}'s server has no GPU sample after 20 s: {body}"
        time.sleep(0.2)


def test_alice_sees_her_gpus_with_her_token(hub):
    body = gpus(hub, "alice", hub.tokens["alice"])
    assert body["driver_version"] == "580.159.04"
    r = hub.request("GET", "/user/alice/gpuenv/api/gpus/history", token=hub.tokens["alice"])
    assert r.status_code == 200 and r.json()["samples"], r.text[:300]
    # c.Spawner.args = [..., "--GpuEnv.sample_interval=0.5"] reached the extension
    assert r.json()["interval"] == 0.5


def test_bobs_token_is_refused_on_alices_server(hub):
    r = hub.request("GET", "/user/alice/gpuenv/api/gpus", token=hub.tokens["bob"])
    assert r.status_code == 403, (r.status_code, r.text[:300])
    assert "gpus" not in r.text


def test_no_token_gets_no_data(hub):
    for path in ("/user/alice/gpuenv/api/gpus", "/user/alice/gpuenv/api/gpus/history"):
        r = hub.request("GET", path)
        assert r.status_code in (302, 403), (path, r.status_code, r.text[:300])
        if r.status_code == 302:  # to the hub's login / OAuth, never to data
            assert "/hub/" in r.headers["Location"], r.headers["Location"]
        assert "gpus" not in r.text and "driver_version" not in r.text


def test_the_lab_page_without_login_redirects_to_the_hub(hub):
    r = hub.request("GET", "/user/alice/lab")
    assert r.status_code == 302, r.status_code
    assert "/hub/" in r.headers["Location"], r.headers["Location"]


def test_each_user_sees_only_the_gpus_the_spawner_gave_them(hub):
    # alice: CUDA_VISIBLE_DEVICES=1 from the spawner's environment (tests/hub/jupyterhub_config.py)
    alice = gpus(hub, "alice", hub.tokens["alice"])["gpus"]
    assert [(g["index"], g["uuid"]) for g in alice] == [(1, RECORDED[1]["nvmlDeviceGetUUID"])]
    # bob: NVIDIA_VISIBLE_DEVICES=0
    bob = gpus(hub, "bob", hub.tokens["bob"])["gpus"]
    assert [(g["index"], g["uuid"]) for g in bob] == [(0, RECORDED[0]["nvmlDeviceGetUUID"])]
    # GPU 0's processes belong to bob's view only
    assert bob[0]["processes"] and not alice[0]["processes"]
