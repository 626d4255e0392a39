"""A bench worker that misbehaves on purpose (`RunSettings.worker_entry`), for the tests of
the parent's recovery paths: on an instance whose onnx name starts with "exit_" it dies
with status 3, with "hang_" it sleeps forever, with "bloat_" it allocates memory without
end (64 MB a step, capped at 4 GB should nobody stop it); other instances run normally."""
from __future__ import annotations

import os
import time

import verifier.bench.worker as worker


def faulty_worker_main(*args) -> None:
    real = worker._verify_one

    def verify_one(task: dict, *rest):
        name = os.path.basename(task["onnx"])
        if name.startswith("exit_"):
            os._exit(3)
        if name.startswith("hang_"):
            time.sleep(1e6)
        if name.startswith("bloat_"):
            hoard = []
            while len(hoard) < 64:
                hoard.append(bytearray(b"x" * 64 * 2**20))
                time.sleep(0.01)
            time.sleep(1e6)
        return real(task, *rest)

    worker._verify_one = verify_one
    worker.worker_main(*args)
