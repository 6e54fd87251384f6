"""sdprune: train deep with stochastic depth, learn which blocks matter, ship shallow.

Nothing happens at import time; import the submodules you need.
"""

__version__ = "0.1.0"
