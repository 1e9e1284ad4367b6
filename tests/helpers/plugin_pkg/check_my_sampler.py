"""What a sampler author writes in their own repository (the pytest11 fixture)."""


def test_midpoint(convergence_check):
    convergence_check("midpoint", order=2)


def test_extra_call(convergence_check):
    convergence_check("midpoint_extra_call")
