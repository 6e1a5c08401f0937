"""The stack's metrics targets file, rewritten by kills and starts that run on threads side by side
(the chaos scenarios start a killed worker again in the background while the next kill comes)."""
from __future__ import annotations

import json
import threading
from pathlib import Path

from floodgate.devstack import Stack
from floodgate.settings import Settings


def test_writers_on_two_threads_never_lose_the_file(tmp_path: Path) -> None:
    stack = Stack(Settings.from_env({}), tmp_path)
    errors: list[BaseException] = []
    go = threading.Barrier(2)

    def churn(name: str) -> None:
        go.wait()
        try:
            for i in range(500):
                stack.metrics_urls[name] = f"http://127.0.0.1:{9000 + i}/metrics"
                stack.write_targets()
                stack.metrics_urls.pop(name, None)
                stack.write_targets()
        except BaseException as exc:  # a rename that found the other's temporary file gone
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(f"worker-{n}",)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert json.loads(stack.targets_file.read_text()) == []  # the last writes dropped both
    assert not stack.targets_file.with_suffix(".tmp").exists()
