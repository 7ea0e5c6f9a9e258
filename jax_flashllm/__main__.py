"""``python -m jax_flashllm prune|eval|generate``: see jax_flashllm.cli."""

import sys

from jax_flashllm.cli import main

sys.exit(main())
