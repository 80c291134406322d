"""``python -m lukhas_gpu.cli``: the ``lukhas-gpu`` command."""
import sys

from .main import main

sys.exit(main())
