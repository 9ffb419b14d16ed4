"""Training of diffusion priors with Lightning: ``EDMPriorModule`` and ``sciprior train`` (cli.py)."""
