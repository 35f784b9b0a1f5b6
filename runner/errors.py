"""The exceptions a user sees as a single line: what is wrong, which key, and the fix.

An exception that ends a run in a status other than "failed" names it with a `status` class attribute
(runner.nonfinite.Diverged, runner.preemption.Preempted); `runner.run_folder.outcome` reads them.
"""


class ConfigError(ValueError):
    """Bad input that the user can fix; `divrun` prints it as one line and exits with status 2."""
    exit_code = 2


class WorkersFailed(RuntimeError):
    """A torchrun worker of the run ended with a non-zero status; it printed its own error."""

    def __init__(self, rank: int, exitcode: int):
        self.rank, self.exitcode = rank, exitcode
        super().__init__(f"worker rank {rank} exited with status {exitcode} (its error is printed above)")
