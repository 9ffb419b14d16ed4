"""``sciprior batch``: many inputs with Lightning's predict loop over devices and nodes, exactly once, resumable.

- :mod:`~sciprior.app.batch.spec`: :class:`ItemSpec` (one input, as a processor receives it), :class:`ItemOutput`;
- :mod:`~sciprior.app.batch.inputs`: globs, manifests, item names and seeds;
- :mod:`~sciprior.app.batch.registry`: the processors a config may name (``reconstruct`` and the entry-point
  group ``sciprior.processors``; never an import path);
- :mod:`~sciprior.app.batch.records`, :mod:`~sciprior.app.batch.engine`: per-item records (the commit), the
  Lightning data module / module / writer, the summary, :func:`run_batch`;
- :mod:`~sciprior.app.batch.reconstruct_item`: the default processor (a ``sciprior reconstruct`` config per input);
- :mod:`~sciprior.app.batch.cli`: :class:`BatchConfig` and the command line (``python -m sciprior.app.batch``).
"""

from sciprior.app.batch.engine import (
    BatchDataModule,
    BatchModule,
    BatchSummary,
    BatchWriter,
    PreparedBatch,
    ShardSampler,
    prepare_batch,
    run_batch,
    summarize,
    write_summary,
)
from sciprior.app.batch.inputs import resolve_inputs
from sciprior.app.batch.records import is_done, read_record
from sciprior.app.batch.registry import load_process_item
from sciprior.app.batch.spec import BatchConfigError, ItemOutput, ItemSpec, item_seed

__all__ = [
    "BatchConfigError", "BatchDataModule", "BatchModule", "BatchSummary", "BatchWriter", "ItemOutput", "ItemSpec",
    "PreparedBatch", "ShardSampler", "is_done", "item_seed", "load_process_item", "prepare_batch", "read_record",
    "resolve_inputs", "run_batch", "summarize", "write_summary",
]
