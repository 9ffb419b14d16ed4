"""``python -m sciprior.app.batch CONFIG.yaml [--key value ...]``: the same as ``sciprior batch``."""

import sys

from sciprior.app.batch.cli import main

sys.exit(main())
