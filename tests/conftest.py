"""Shared test set-up: one CPU thread, and a small trained run other tests can read."""

from __future__ import annotations

import os

import pytest
import torch

from sdprune.report import Reporter


def pytest_configure(config) -> None:
    # The 2-core CI machine is shared: two OpenMP threads competing with other processes
    # run a small net ~10x slower than one thread does. SDPRUNE_TEST_THREADS overrides.
    torch.set_num_threads(int(os.environ.get("SDPRUNE_TEST_THREADS", "1")))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``long`` (10-90 s each, from ``--durations``) go first. The two workers
    take the collection in contiguous halves and steal from the tail of each other's queue,
    so a long test left near the end runs alone while the other worker idles; first, the
    light tests fill in around it. The order is the same on every worker, as xdist needs."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)  # stable: otherwise as collected


@pytest.fixture(scope="session", autouse=True)
def private_runs_folder(tmp_path_factory):
    """Runs the tests make are listed in a runs index of their own, not in ./runs of the checkout
    (where "the newest run" would otherwise become a test's)."""
    saved = os.environ.get("SDPRUNE_RUNS")
    os.environ["SDPRUNE_RUNS"] = str(tmp_path_factory.mktemp("runs"))
    yield
    if saved is None:
        del os.environ["SDPRUNE_RUNS"]
    else:
        os.environ["SDPRUNE_RUNS"] = saved


@pytest.fixture(scope="session")
def subprocess_env() -> dict[str, str]:
    """Environment for `python -m sdprune` subprocesses: same thread count, repo importable."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env



class InterruptAfter(Reporter):
    """A quiet reporter that pretends the user pressed Ctrl-C right after epoch ``after`` was saved."""

    def __init__(self, after: int) -> None:
        super().__init__(quiet=True)
        self.after = after

    def info(self, message: str) -> None:
        if message.startswith(f"epoch {self.after}/"):
            raise KeyboardInterrupt


@pytest.fixture
def interrupt_after():
    """``interrupt_after(n)``: a reporter for ``train`` that raises KeyboardInterrupt after epoch n."""
    return InterruptAfter


def check_same_training_state(a: dict, b: dict) -> None:
    """Two checkpoints hold the same weights and optimizer state (SGD's momentum, AdamW's
    moments and step), bit for bit (an exact resume)."""
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][key]), key
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for key, state in a["optimizer"]["state"].items():
        assert state.keys() == b["optimizer"]["state"][key].keys() and state, key
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["optimizer"]["state"][key][name])), name


@pytest.fixture
def same_training_state():
    """``same_training_state(a, b)``: assert two loaded checkpoints are the same training state."""
    return check_same_training_state
