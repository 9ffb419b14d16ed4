"""The generic training pipeline (no modality lives here): :class:`~sciprior.datasets.module.PriorDataModule`
reads a modality's files with that modality's reader, :mod:`~sciprior.datasets.views` draws the random views,
:mod:`~sciprior.datasets.sampling` the per-epoch, resumable sampling, :mod:`~sciprior.datasets.oblique` the
oblique re-slicing of volumes."""
