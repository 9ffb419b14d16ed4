"""The commands' plumbing: ``reconstruct`` (config -> job -> run -> files and report) and ``batch``.

- :mod:`~sciprior.app.config`: the reconstruction config (sections, legacy spellings, checks before compute);
- :mod:`~sciprior.app.reconstruct`: running a job (:func:`reconstruct`, :func:`run_reconstruction`, the CLI);
- :mod:`~sciprior.app.report`: report.json and report.png through the adapter's metrics and previews;
- :mod:`~sciprior.app.batch`: many inputs over devices and nodes.
"""

from sciprior.app.reconstruct import reconstruct, run_reconstruction

__all__ = ["reconstruct", "run_reconstruction"]
