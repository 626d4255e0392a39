"""`nncert bench --backend ray` (verifier/bench/ray_backend.py): each instance a Ray task on
a local cluster of two workers; the same rows as the local backend, and a Ray worker lost
under a task costs one retry, then an error row, never a lost instance or a verdict."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.conftest import BENCH, REFERENCE
from verifier.bench import RayOptions, Slots, read_expected, read_instances, run_bench
from verifier.bench.process import RunSettings
from verifier.bench.ray_backend import run_instance
from verifier.ray_connect import ray_available
from verifier.cli import main

pytestmark = [
    pytest.mark.skipif(not ray_available(), reason="the optional ray package is not installed (pip install nncert[ray])"),
    pytest.mark.skipif(not (BENCH / "2022_test" / "instances.csv").is_file(),
                       reason="../shared/bench/2022_test is not beside the checkout"),
]

FAMILY = BENCH / "2022_test" / "instances.csv"


@pytest.fixture(scope="module", autouse=True)
def _cluster(tmp_path_factory):
    """One local cluster of two workers for the module (a run finding Ray started uses it and
    leaves it running); the tasks below go to it by value, so that its workers need not
    import the tests package."""
    import ray
    import ray.cloudpickle

    # The workers' environment is the one at start: the marker folder of _dies_once goes in first.
    os.environ["NNCERT_RAY_TEST_DIR"] = str(tmp_path_factory.mktemp("ray_markers"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()
    del os.environ["NNCERT_RAY_TEST_DIR"]


def test_ray_rows_equal_the_local_ones(tmp_path: Path) -> None:
    out = tmp_path / "ray.csv"
    code = main(["bench", str(FAMILY), "--backend", "ray", "--jobs", "2", "--isolate", "worker", "--out", str(out),
                 "--expected", str(REFERENCE / "expected.csv"), "-q"])
    assert code == 0
    instances = read_instances(FAMILY)[2:]
    local = run_bench(instances, Slots("worker", 1), expected=read_expected(REFERENCE / "expected.csv"), quiet=True)
    ray_rows = {(r.split(",")[0], r.split(",")[1]): r for r in out.read_text().splitlines()[1:]}
    assert len(ray_rows) == 5 and len(local.outcomes) == 3
    for o in local.outcomes:   # the last three, beside the local backend (the first two: the test below)
        row = ray_rows[(o.instance.onnx, o.instance.vnnlib)]
        assert f",{o.verdict}," in row and o.correct != "no"


def _dies_once(instance, settings, isolate):
    """Loses its Ray worker the first time it runs an instance (a marker file says so)."""
    marker = Path(os.environ["NNCERT_RAY_TEST_DIR"]) / f"died-{instance.index}"
    if not marker.exists():
        marker.write_text("x")
        os._exit(1)
    return run_instance(instance, settings, isolate)


def _always_dies(instance, settings, isolate):
    os._exit(1)


def test_a_lost_worker_is_retried_once_then_an_error_row() -> None:
    markers = Path(os.environ["NNCERT_RAY_TEST_DIR"])
    instances = read_instances(FAMILY)[:2]
    run = run_bench(instances, Slots("process", 2, RayOptions(task=_dies_once)), RunSettings(), quiet=True)
    assert [o.verdict for o in run.outcomes] == ["unsat", "unsat"]
    assert sorted(p.name for p in markers.iterdir()) == ["died-0", "died-1"]
    run = run_bench(instances, Slots("process", 2, RayOptions(task=_always_dies)), RunSettings(), quiet=True)
    assert [o.verdict for o in run.outcomes] == ["error", "error"]
    assert all("ray: the task failed after 1 retry" in o.error for o in run.outcomes)


def test_address_needs_the_ray_backend(capsys) -> None:
    assert main(["bench", str(FAMILY), "--address", "127.0.0.1:6379"]) == 2
    assert "--address needs --backend ray" in capsys.readouterr().err


def test_an_unreachable_address_is_bad_input(capsys) -> None:
    """ray.init would retry such an address for minutes; the CLI refuses it at once."""
    for address, needle in (("127.0.0.1:1", "no Ray cluster answers at 127.0.0.1:1"),
                            ("bogus", "expected HOST:PORT")):
        assert main(["bench", str(FAMILY), "--backend", "ray", "--address", address, "-q"]) == 2
        assert needle in capsys.readouterr().err


def test_a_process_already_on_ray_refuses_an_address_naming_another_cluster() -> None:
    """Ray allows one connection per process: the pool uses the caller's, and says so
    rather than run the suite on a cluster other than the one `address` names."""
    import ray

    from verifier.bench.ray_backend import RayPool

    settings = RunSettings(config_path=None, overrides=(), grace_s=1.0, mem_limit_mb=None)
    here = ray.get_runtime_context().gcs_address
    for address in ("auto", here, here.replace("127.0.0.1", "localhost")):
        RayPool(jobs=1, settings=settings, address=address).close()   # the same cluster: accepted, left running
    assert ray.is_initialized()
    port = int(here.rpartition(":")[2])
    for other in (f"127.0.0.1:{port + 1}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(ValueError, match="already initialised.*names another"):
            RayPool(jobs=1, settings=settings, address=other)
