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


def require(problems) -> None:
    """Raise one ConfigError listing `problems` (one line each), or return when there are none."""
    problems = list(dict.fromkeys(problems))  # in order, each once
    if problems:
        raise ConfigError("\n".join(problems))


def checked_by(check):
    """A factory whose config rules are `check(**its options) -> problem lines`: the factory runs it on its own
    arguments, and the pre-flight (runner/validate.py) runs it on the config node before anything is built."""
    import functools
    import inspect

    def attach(factory):
        signature = inspect.signature(factory)

        @functools.wraps(factory)
        def checked_factory(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            require(check(**bound.arguments))
            return factory(*args, **kwargs)

        checked_factory.check_options = check
        return checked_factory
    return attach


def problems_from(work) -> list[str]:
    """The problem lines of the ConfigError that `work()` raises ([] when it raises none)."""
    try:
        work()
    except ConfigError as error:
        return str(error).splitlines()
    return []
