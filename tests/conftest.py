"""Shared test setup: 8 simulated CPU devices, so sharding is really exercised."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pathlib  # noqa: E402

import pytest  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"


def shared_path(*parts):
    """Path under ../shared, or skip the test saying why when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference material {path} is absent (../shared sits only beside the project's own checkout)")
    return path


@pytest.fixture(scope="session")
def subprocess_env(tmp_path_factory):
    """The tests' environment plus a compilation cache shared by this session's subprocesses: CLI runs of one
    configuration compile their programs once."""
    return dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.getbasetemp() / "jax_cache"),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


@pytest.fixture
def shared_compilation_cache(subprocess_env, monkeypatch):
    """This process's environment set to `subprocess_env`'s cache, for subprocesses started without env=."""
    for key in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"):
        monkeypatch.setenv(key, subprocess_env[key])


@pytest.fixture(scope="module", autouse=True)
def fresh_gin_config():
    """No gin binding leaks from one test module into the next (e.g. a prompt injected into Transformer)."""
    import gin
    gin.clear_config()
    yield
    gin.clear_config()
