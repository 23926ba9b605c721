import os

import pytest
import torch
from hypothesis import HealthCheck, Phase, settings

settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    derandomize=True,
)
settings.register_profile("dev", max_examples=100, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
# "triage": the ci examples without shrinking, to list every failure of a run quickly
settings.register_profile("triage", parent=settings.get_profile("ci"),
                          phases=[Phase.explicit, Phase.reuse, Phase.generate])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

torch.set_num_threads(min(2, torch.get_num_threads()))
# the rewriter re-raises what it would otherwise report as a rejected rewrite (a bug in a
# replacement must fail the tests, not quietly leave a model unfused)
os.environ.setdefault("PAINNFX_STRICT", "1")
# the auto path rule's compiled forces graph costs an Inductor compile (5-20 s) per model and kind
# of call: off for the suite at large; tests/test_joint_forces.py turns it on and asserts it ran
os.environ.setdefault("PAINNFX_JOINT", "0")


def pytest_addoption(parser):
    parser.addoption("--require-env", action="store_true",
                     help="painnfx: a missing piece of the environment (NVRTC, the CUDA emulator, a C++ compiler, "
                          "libasan, schnetpack, OpenMM, torch-sim, LAMMPS) fails its tests instead of skipping them "
                          "(the README's test command, CI)")
    parser.addoption("--fuzz-examples", type=int, default=100,
                     help="painnfx: hypothesis examples per fuzz test (tests/test_fuzz.py)")


def pytest_configure(config):
    import helpers

    helpers.REQUIRE_ENV = config.getoption("--require-env")
    helpers.FUZZ_EXAMPLES = config.getoption("--fuzz-examples")


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(skip_cuda)


def cpu_backends() -> list[str]:
    """Every implementation of the fused ops that runs on this machine's CPU."""
    from painnfx.ops import dispatch

    return [name for name in dispatch.available_backends() if name != "cuda"]


@pytest.fixture(params=cpu_backends())
def each_backend(request):
    """Run the test under each CPU backend in turn (the op tests use it for every op)."""
    from painnfx.ops import use_backend

    if request.param == "cpp":
        from helpers import env_skip
        from painnfx.ops.cpu import backend

        if backend.library() is None:  # the op would quietly run the reference: no test of the kernels
            env_skip(f"the C++ kernels are unavailable here ({backend.info().get('error')})")
    with use_backend(request.param):
        yield request.param
