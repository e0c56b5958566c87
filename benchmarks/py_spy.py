"""py-spy sampling another process during one phase of a benchmark, and what its output says.

`PySpy` records the process's collapsed stacks (`--format raw`) until stopped, then prints
the share of samples per function (`top_functions`) to stderr. py-spy comes from PyPI; it
is looked for on PATH, then beside this Python.
"""

from __future__ import annotations

import collections
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path


class PySpy:
    """py-spy recording `pid` into `output` (the phase is the file's stem) until `stop`.

    `gil`: sample only the thread holding the GIL (CPU, not idle pool threads); `attach`:
    return only once py-spy says it is sampling; `label` names the process in the printout,
    which lists the `top` functions.
    """

    def __init__(
        self,
        pid: int,
        output: Path,
        *,
        label: str,
        rate: int,
        gil: bool = False,
        attach: bool = False,
        top: int = 20,
    ) -> None:
        self.output = output
        self.phase = output.stem
        self._label = label
        self._top = top
        self._stopped = False
        command = [_executable(), "record", "--pid", str(pid), "--format", "raw", "--rate", str(rate)]
        if gil:
            command.append("--gil")
        command += ["-o", str(output)]
        stdout = subprocess.PIPE if attach else subprocess.DEVNULL
        self.process = subprocess.Popen(command, stdout=stdout, stderr=subprocess.DEVNULL)
        if attach:
            assert self.process.stdout is not None
            self.process.stdout.readline()  # "py-spy> Sampling process ...": attached

    def stop(self) -> None:
        """Stop sampling (SIGINT makes py-spy write its file) and print the top functions."""
        if self._stopped:
            return
        self._stopped = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.communicate()
        if self.output.exists():
            print(
                f"## py-spy, {self._label}, {self.phase}\n{top_functions(self.output, self._top)}",
                file=sys.stderr,
            )


def _executable() -> str:
    return shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


def top_functions(path: Path, count: int = 20) -> str:
    """Share of samples per function in py-spy's raw output: self time, then inclusive."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        n = int(samples)
        total += n
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return "no samples"
    lines = [f"{total} samples; self:"]
    lines += [f"  {100 * n / total:5.1f}% {frame}" for frame, n in own.most_common(count)]
    lines.append("inclusive (below the event loop):")
    below = [(f, n) for f, n in inclusive.most_common() if n < 0.99 * total]
    lines += [f"  {100 * n / total:5.1f}% {frame}" for frame, n in below[:count]]
    return "\n".join(lines)
