"""The shared host's policy (pure): which environments, how many GPUs and kernels, per user, group, default."""

import pytest

from jupyter_gpuenv.broker.leases import KernelLease, LeaseBook
from jupyter_gpuenv.broker.policy import Policy, Rule, check_start
from jupyter_gpuenv.errors import NotPermitted

POLICY = Policy.parse(
    {
        "default": {"environments": ["cpu"], "max_gpus": 0, "max_kernels": 2},
        "groups": {"gpu": {"environments": ["cpu", "torch"], "max_gpus": 1}, "big": {"max_gpus": 4}},
        "users": {"carol": {"environments": "*", "max_kernels": 1}},
    }
)


def test_a_users_own_rule_wins_then_the_most_permissive_group_then_the_default():
    assert POLICY.rule_for("carol", ["gpu"]) == Rule(None, None, 1)
    assert POLICY.rule_for("alice", ["gpu"]) == Rule(frozenset({"cpu", "torch"}), 1, None)
    assert POLICY.rule_for("bob", ["gpu", "big"]) == Rule(None, 4, None)  # "big" allows every environment
    assert POLICY.rule_for("dave", []) == Rule(frozenset({"cpu"}), 0, 2)
    assert Policy.parse({}).rule_for("anyone", []) == Rule()  # no policy: everything, no limits


def test_refusals_say_what_is_allowed_and_what_to_do():
    with pytest.raises(NotPermitted, match=r"dave may not use the environment 'torch' on this host \(allowed: cpu\)"):
        check_start(POLICY.rule_for("dave", []), "dave", "torch", 1, 0, 0)
    with pytest.raises(NotPermitted, match="holds 1 GPU.*allows 1 at once"):
        check_start(POLICY.rule_for("alice", ["gpu"]), "alice", "torch", 1, 1, 1)
    with pytest.raises(NotPermitted, match="already runs 1 container kernel"):
        check_start(POLICY.rule_for("carol", []), "carol", "torch", 1, 0, 1)
    check_start(POLICY.rule_for("alice", ["gpu"]), "alice", "torch", 1, 0, 3)


@pytest.mark.parametrize(
    "raw, words",
    [
        ({"defaults": {}}, "unknown key(s) 'defaults'"),
        ({"default": {"max_gpu": 1}}, "unknown key(s) 'max_gpu'"),
        ({"users": {"a": {"max_gpus": -1}}}, "'max_gpus' must be a whole number"),
        ({"groups": {"g": {"environments": "torch"}}}, "'environments' must be a list"),
    ],
)
def test_a_malformed_policy_is_refused_with_a_sentence(raw, words):
    with pytest.raises(ValueError) as err:
        Policy.parse(raw)
    assert words in str(err.value)


def test_the_lease_book_survives_a_restart_and_is_the_owners_alone(tmp_path):
    book = LeaseBook(str(tmp_path / "leases.json"))
    book.put(KernelLease("k1", 1001, "alice", "torch", "/s/1001/k1", "running", "c1", ["GPU-0"], True))
    book.put(KernelLease("k2", 1002, "bob", "cpu", "/s/1002/k2", "running", "c2", [], False))
    again = LeaseBook(str(tmp_path / "leases.json"))
    again.load()
    assert again.holdings().exclusive == {"GPU-0": ["k1"]}
    assert again.by_container("alice", "c1").kernel_id == "k1"
    assert again.by_container("bob", "c1") is None  # bob cannot reach alice's kernel by its container id
    assert (tmp_path / "leases.json").stat().st_mode & 0o077 == 0
    again.drop(again.get("alice", "k1"))
    reloaded = LeaseBook(str(tmp_path / "leases.json"))
    reloaded.load()
    assert [k.kernel_id for k in reloaded] == ["k2"]
