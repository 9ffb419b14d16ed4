"""DDP on two CPU processes (gloo): disjoint shards per rank, identical weights at the end."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning.pytorch as pl
import torch
from training_helpers import TINY_NET, write_volumes

from sciprior.datasets.module import PriorDataModule
from sciprior.training.module import EMA, EDMPriorModule


class RecordRanks(pl.Callback):
    """Writes, per rank, a hash of every training example it saw (per epoch) and its final weights."""

    def __init__(self, out: str):
        self.out = out
        self.seen: dict[int, list[str]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        rows = self.seen.setdefault(trainer.current_epoch, [])
        rows += [hashlib.sha1(x.numpy().tobytes()).hexdigest() for x in batch.cpu()]

    def on_train_end(self, trainer, pl_module):
        r = trainer.global_rank
        Path(self.out, f"seen{r}.json").write_text(json.dumps(self.seen))
        torch.save(
            {k: v.detach().cpu() for k, v in pl_module.state_dict().items()}, Path(self.out, f"w{r}.pt")
        )


def test_ddp_two_cpu_processes(tmp_path: Path):
    files = write_volumes(tmp_path / "data", 3, shape=(16, 16, 8))
    dm = PriorDataModule(
        "mri",
        [str(f) for f in files[:2]],
        reader={"percentiles": [0.0, 100.0]},
        val_paths=[str(files[2])],
        batch_size=4,
        flips=False,
        rot90=False,
    )  # 16 training slices: 2 batches per rank
    model = EDMPriorModule(network=dict(TINY_NET), warmup_steps=1, lr=1e-3)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
        callbacks=[EMA(decay=0.5), RecordRanks(str(tmp_path))],
    )
    trainer.fit(model, dm)

    seen = [json.loads((tmp_path / f"seen{r}.json").read_text()) for r in (0, 1)]
    for epoch in ("0", "1"):
        a, b = seen[0][epoch], seen[1][epoch]
        assert len(a) == len(b) == 8
        assert len(set(a) | set(b)) == 16, f"ranks overlap or repeat examples in epoch {epoch}"
    assert seen[0]["0"] != seen[0]["1"], "the shard should be reshuffled every epoch"
    w0, w1 = torch.load(tmp_path / "w0.pt"), torch.load(tmp_path / "w1.pt")
    assert w0.keys() == w1.keys()
    for k in w0:  # bitwise: both ranks start from rank 0's weights and apply the same all-reduced gradients
        torch.testing.assert_close(w0[k], w1[k], rtol=0, atol=0, msg=k)
    fresh = EDMPriorModule(network=dict(TINY_NET)).state_dict()
    assert any(not torch.equal(fresh[k], w0[k]) for k in w0), "weights did not change"
