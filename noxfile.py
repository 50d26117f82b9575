"""Sessions: `nox -s tests` (the default suite), `lint`, `slow` (long tests), `gpu` (the GPU check, benchmarks/gpu_check.py),
`bench` (the benchmark suite, then BENCHMARKS.md rendered from its results; `nox -s bench -- --quick` or `-- NAME ...`)."""

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

TORCH = ["torch==2.14.1", "torchvision==0.29.1"]


def _install(session: nox.Session) -> None:
    session.install(*TORCH)
    session.install("-e", ".[test]")


@nox.session
def tests(session: nox.Session) -> None:
    _install(session)
    session.run("pytest", "-n", "2", *session.posargs)


@nox.session
def slow(session: nox.Session) -> None:
    _install(session)
    session.run("pytest", "-m", "slow", *session.posargs)


@nox.session
def gpu(session: nox.Session) -> None:
    """The whole GPU check in one go (<= 8 min on one GPU): CUDA tests, r20-fmnist fp32 vs bf16, sample, export."""
    _install(session)
    session.run("python", "benchmarks/gpu_check.py", "--record", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    _install(session)
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "eqtools", "tests", "benchmarks", "noxfile.py")
