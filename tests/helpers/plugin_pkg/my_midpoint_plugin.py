"""The `plugins=[my_midpoint_plugin]` route: importing it registers the samplers."""

from k_diffusion.sampling import sample_euler
from my_midpoint import sample_midpoint

from convergence.core.registries import register_sampler

register_sampler("plugin_midpoint", sample_midpoint, aliases=("Plugin Midpoint",))
# a first-order method claimed as second order
register_sampler("euler_claimed_second", sample_euler, order=2)
