"""Train the multi-label reward model (``safealign train-reward``).

The loop is readable top to bottom: read the train and val splits, tokenize once, then epochs of
length-bucketed, dynamically padded batches with AdamW and a linear warm-up/decay schedule. The loss is an
MSE on sigmoid outputs that is MASKED where a row has no label for an aspect (null score), averaged per
aspect so an aspect labelled on few rows is not drowned by one labelled on all. Early stopping keeps the
weights of the epoch with the lowest validation loss.

Speed on a 2-core CPU is what the defaults are tuned for: every batch is padded only to its own longest
pair, batches group pairs of similar length, and the lower encoder layers can be frozen
(``reward.freeze_layers``).
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from safealign.common.atomic import write_json_result
from safealign.common.jsonl import iter_jsonl
from safealign.common.layout import Layout
from safealign.common.stats import json_safe, per_aspect
from safealign.config import Settings
from safealign.data.schema import REAL_REPLY_KIND, label_source_column, score_column
from safealign.errors import DataError
from safealign.reward.model import RewardModel

log = logging.getLogger(__name__)

# Chunk size (in batches) inside which pairs are sorted by length: big enough for tight padding, small
# enough that batch composition still changes between epochs.
BUCKET_BATCHES = 50


@dataclass
class LabelledSplit:
    """One split of the labelled data: texts, an [N, K] score matrix with NaN where unlabelled."""

    path: Path
    ids: list[str]
    prompts: list[str]
    responses: list[str]
    scores: np.ndarray
    sources: list[dict[str, str | None]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)

    def labelled_count(self) -> np.ndarray:
        return (~np.isnan(self.scores)).sum(axis=0)


def read_split(path: str | Path, aspects: list[str]) -> LabelledSplit:
    """Read a labelled split (JSON lines). DataError names file, row and field on anything malformed."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: split not found (run `safealign validate` first)")
    ids: list[str] = []
    prompts: list[str] = []
    responses: list[str] = []
    scores: list[list[float]] = []
    sources: list[dict[str, str | None]] = []
    rows: list[dict[str, Any]] = []
    for lineno, row in iter_jsonl(path):
        for col in ("prompt", "response"):
            if not isinstance(row.get(col), str):
                raise DataError(f"{path}: row {lineno}: field {col!r} missing or not a string")
        values: list[float] = []
        for aspect in aspects:
            col = score_column(aspect)
            if col not in row:
                raise DataError(
                    f"{path}: row {lineno}: field {col!r} missing (aspect {aspect!r} in params)"
                )
            v = row[col]
            if v is None:
                values.append(float("nan"))
            elif isinstance(v, int | float) and not isinstance(v, bool) and 0.0 <= float(v) <= 1.0:
                values.append(float(v))
            else:
                raise DataError(
                    f"{path}: row {lineno}: field {col!r} = {v!r} is not null or a float in [0, 1]"
                )
        ids.append(str(row.get("id", lineno)))
        prompts.append(row["prompt"])
        responses.append(row["response"])
        scores.append(values)
        sources.append({a: row.get(label_source_column(a)) for a in aspects})
        rows.append(row)
    if not prompts:
        raise DataError(f"{path}: no rows")
    return LabelledSplit(path, ids, prompts, responses, np.asarray(scores, dtype=np.float32), sources, rows)


def require_labels(split: LabelledSplit, aspects: list[str]) -> None:
    """Every aspect needs labelled rows, or its head would be trained (and judged) on nothing."""
    counts = split.labelled_count()
    missing = [a for a, c in zip(aspects, counts, strict=True) if c == 0]
    if missing:
        raise DataError(
            f"{split.path}: no labelled rows for aspect(s) {missing} (field score_<aspect> all null)"
        )


def masked_mse(probs: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over aspects of each aspect's MSE over its labelled rows only.

    ``torch.where`` (not a multiplication by the mask) keeps NaN or garbage in unlabelled slots out of
    both the value and the gradient: NaN * 0 is NaN, where() is not.
    """
    sq = torch.where(mask, (probs - torch.where(mask, target, probs.detach())) ** 2, torch.zeros_like(probs))
    counts = mask.sum(dim=0)
    present = counts > 0
    if not bool(present.any()):
        return probs.sum() * 0.0
    per_aspect_loss = sq.sum(dim=0)[present] / counts[present]
    return per_aspect_loss.mean()


def length_batches(lengths: list[int], batch_size: int, rng: random.Random | None) -> list[list[int]]:
    """Batches of indices with similar lengths; with ``rng``: shuffled chunks, sorted within, shuffled."""
    idx = list(range(len(lengths)))
    if rng is None:
        idx.sort(key=lambda i: lengths[i])
        return [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
    rng.shuffle(idx)
    chunk = batch_size * BUCKET_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(idx), chunk):
        part = sorted(idx[start : start + chunk], key=lambda i: lengths[i])
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def epoch_rows(split: LabelledSplit, real_reply_repeat: int) -> list[int]:
    """Row indices one epoch visits: every row once, real policy replies ``real_reply_repeat`` times.

    Why: the real replies are the only rows in the policy's own register and a few percent of the set;
    without repetition the templated rows decide what the heads learn about real text.
    """
    out: list[int] = []
    for i, row in enumerate(split.rows):
        out += [i] * (real_reply_repeat if row.get("response_kind") == REAL_REPLY_KIND else 1)
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _init_head_bias(model: RewardModel, scores: np.ndarray) -> None:
    """Start each output at its label mean (logit), so early epochs learn contrast, not the offset."""
    with torch.no_grad():
        for k in range(scores.shape[1]):
            col = scores[:, k]
            mean = float(np.nanmean(col)) if (~np.isnan(col)).any() else 0.5
            mean = min(max(mean, 0.02), 0.98)
            model.head.bias[k] = math.log(mean / (1 - mean))


def cache_lower(
    model: RewardModel,
    items: list[tuple[list[int], list[int], list[int]]],
    n_layers: int,
    batch_size: int = 64,
) -> list[torch.Tensor]:
    """Per pair, the hidden states after the frozen layers ([T_i, H], float16 to halve the memory)."""
    out: list[torch.Tensor | None] = [None] * len(items)
    for idx in length_batches([len(i[0]) for i in items], batch_size, None):
        batch = {k: v.to(model.device) for k, v in model.collate([items[i] for i in idx]).items()}
        hidden = model.lower_hidden(
            batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], n_layers
        )
        for row, i in enumerate(idx):
            out[i] = hidden[row, : len(items[i][0])].to(torch.float16).cpu().clone()
    return out  # type: ignore[return-value]


def _logits(
    model: RewardModel,
    items: list[tuple[list[int], list[int], list[int]]],
    cache: list[torch.Tensor] | None,
    n_layers: int,
    idx: list[int],
) -> torch.Tensor:
    """Logits for rows ``idx``: from cached frozen-layer states when there are any, else a full forward."""
    if cache is None:
        batch = {k: v.to(model.device) for k, v in model.collate([items[i] for i in idx]).items()}
        return model(**batch)
    width = max(cache[i].shape[0] for i in idx)
    hidden = torch.zeros((len(idx), width, cache[idx[0]].shape[1]), dtype=torch.float32)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    resp = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        n = cache[i].shape[0]
        hidden[row, :n] = cache[i].float()
        mask[row, :n] = 1
        resp[row, :n] = torch.tensor(items[i][2], dtype=torch.long)
    dev = model.device
    return model.upper_forward(hidden.to(dev), mask.to(dev), n_layers, resp.to(dev))


@torch.no_grad()
def predict(
    model: RewardModel,
    items: list[tuple[list[int], list[int], list[int]]],
    batch_size: int,
    cache: list[torch.Tensor] | None = None,
    n_layers: int = 0,
) -> np.ndarray:
    """Sigmoid outputs [N, K] for pre-tokenized items, in input order."""
    model.eval()
    out = np.zeros((len(items), len(model.aspects)), dtype=np.float32)
    for idx in length_batches([len(i[0]) for i in items], batch_size, None):
        out[idx] = torch.sigmoid(_logits(model, items, cache, n_layers, idx)).float().cpu().numpy()
    return out


def _loss_np(pred: np.ndarray, target: np.ndarray) -> float:
    mask = ~np.isnan(target)
    losses = [
        float(((pred[mask[:, k], k] - target[mask[:, k], k]) ** 2).mean())
        for k in range(target.shape[1])
        if mask[:, k].any()
    ]
    return float(np.mean(losses))


@dataclass
class _Encoded:
    """Both splits tokenised once, with the frozen layers' outputs cached when the model allows it."""

    train_items: list[tuple[list[int], list[int], list[int]]]
    val_items: list[tuple[list[int], list[int], list[int]]]
    train_cache: list[torch.Tensor] | None
    val_cache: list[torch.Tensor] | None
    targets: torch.Tensor  # [N, K] train scores, 0 where unlabelled
    labelled: torch.Tensor  # [N, K] bool: which train scores are labels


def _encode(model: RewardModel, train: LabelledSplit, val: LabelledSplit, frozen: int) -> _Encoded:
    train_items = model.tokenize(train.prompts, train.responses)
    val_items = model.tokenize(val.prompts, val.responses)
    train_cache = val_cache = None
    if frozen and model.supports_prefix_cache():
        t0 = time.perf_counter()
        train_cache = cache_lower(model, train_items, frozen)
        val_cache = cache_lower(model, val_items, frozen)
        log.info(
            "cached the %d frozen layers' output for %d pairs in %.1fs",
            frozen,
            len(train_items) + len(val_items),
            time.perf_counter() - t0,
        )
    targets = torch.from_numpy(np.nan_to_num(train.scores, nan=0.0))
    labelled = torch.from_numpy(~np.isnan(train.scores))
    return _Encoded(train_items, val_items, train_cache, val_cache, targets, labelled)


def _train_epoch(
    model: RewardModel,
    data: _Encoded,
    frozen: int,
    batches: list[list[int]],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    bar: Any,
) -> float:
    """One pass over ``batches`` (masked MSE, clip at 1, AdamW, schedule step); the mean train loss."""
    model.train()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    run_loss, seen = 0.0, 0
    for idx in batches:
        probs = torch.sigmoid(_logits(model, data.train_items, data.train_cache, frozen, idx))
        target, mask = data.targets[idx].to(probs.device), data.labelled[idx].to(probs.device)
        loss = masked_mse(probs, target, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        run_loss += float(loss.detach()) * len(idx)
        seen += len(idx)
        bar.update(1)
        bar.set_postfix(loss=f"{run_loss / seen:.4f}")
    return run_loss / max(seen, 1)


def _validate_epoch(
    model: RewardModel, data: _Encoded, val: LabelledSplit, frozen: int, batch_size: int
) -> tuple[float, dict[str, Any]]:
    """``(val loss, per-aspect R2 and MAE as record columns)`` on the validation split."""
    val_pred = predict(model, data.val_items, batch_size, data.val_cache, frozen)
    stats = per_aspect(val_pred, val.scores, model.aspects)
    columns = {
        **{f"val_r2_{a}": stats[a]["r2"] for a in model.aspects},
        **{f"val_mae_{a}": stats[a]["mae"] for a in model.aspects},
    }
    return _loss_np(val_pred, val.scores), columns


class _EarlyStopping:
    """Holds the weights of the epoch with the lowest val loss; says stop after ``patience`` worse ones."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best_loss = float("inf")
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_epochs = 0

    def stop(self, epoch: int, val_loss: float, model: RewardModel) -> bool:
        if val_loss < self.best_loss - 1e-6:
            self.best_loss, self.best_epoch, self.bad_epochs = val_loss, epoch, 0
            self.best_state = copy.deepcopy({k: v.detach().clone() for k, v in model.state_dict().items()})
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= self.patience


def fit(
    model: RewardModel,
    train: LabelledSplit,
    val: LabelledSplit,
    settings: Settings,
    on_epoch: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``model`` in place with early stopping on val loss; the best epoch's weights are restored.

    ``on_epoch(epoch, metrics)`` is called after each epoch (the stage logs to MLflow with it).
    """
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    cfg = settings.reward
    seed_everything(cfg.seed)
    rng = random.Random(cfg.seed)
    start = time.perf_counter()
    frozen = model.freeze_lower_layers(cfg.freeze_layers)
    _init_head_bias(model, train.scores)
    data = _encode(model, train, val, frozen)
    visits = epoch_rows(train, cfg.real_reply_repeat)
    visit_lengths = [len(data.train_items[i][0]) for i in visits]

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    total = math.ceil(len(visits) / cfg.batch_size) * cfg.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)

    history: list[dict[str, Any]] = []
    best = _EarlyStopping(cfg.patience)
    for epoch in range(1, cfg.epochs + 1):
        batches = [[visits[j] for j in b] for b in length_batches(visit_lengths, cfg.batch_size, rng)]
        desc = f"reward epoch {epoch}/{cfg.epochs}"
        bar = tqdm(total=len(batches), desc=desc, disable=not progress, leave=False)
        train_loss = _train_epoch(model, data, frozen, batches, optimizer, scheduler, bar)
        bar.close()
        val_loss, columns = _validate_epoch(model, data, val, frozen, max(cfg.batch_size, 64))
        record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, **columns,
                  "elapsed_s": time.perf_counter() - start}  # fmt: skip
        history.append(record)
        r2 = {a: round(record[f"val_r2_{a}"], 3) for a in model.aspects}
        log.info("epoch %d: train loss %.4f, val loss %.4f, val R2 %s", epoch, train_loss, val_loss, r2)
        if on_epoch is not None:
            on_epoch(epoch, record)
        if best.stop(epoch, val_loss, model):
            log.info("early stopping after epoch %d (best epoch %d)", epoch, best.best_epoch)
            break
    if best.best_state is not None:
        model.load_state_dict(best.best_state)
    model.eval()
    chosen = history[best.best_epoch - 1] if best.best_epoch else history[-1]
    return {
        "epochs_run": len(history),
        "best_epoch": best.best_epoch,
        "best_val_loss": best.best_loss,
        "val_r2": {a: json_safe(chosen[f"val_r2_{a}"]) for a in model.aspects},
        "val_mae": {a: json_safe(chosen[f"val_mae_{a}"]) for a in model.aspects},
        "frozen_layers": frozen,
        "train_seconds": time.perf_counter() - start,
        "history": [{k: json_safe(v) if isinstance(v, float) else v for k, v in h.items()} for h in history],
    }


# What only describes the process that trained (its MLflow run, how long it took): a rerun that trains
# the same model on the same inputs leaves metrics/train_reward.json as it is (issue 32)
VOLATILE_SUMMARY_FIELDS = ("mlflow_run_id", "train_seconds", "history.*.elapsed_s")


def train_reward(settings: Settings, progress: bool = True) -> dict[str, Any]:
    """The ``train-reward`` stage: train on the train split, stop early on val, write the model folder."""
    import mlflow

    layout = Layout.from_settings(settings)
    aspects = settings.aspect_names
    train = read_split(layout.labelled_split("train"), aspects)
    val = read_split(layout.labelled_split("val"), aspects)
    require_labels(train, aspects)
    require_labels(val, aspects)
    # At most 2 threads (shared 2-core machines); OMP_NUM_THREADS=1 is faster when the CPU is contended.
    if torch.get_num_threads() > 2:
        torch.set_num_threads(2)

    with tracking_run(settings) as run:
        seed_everything(settings.reward.seed)
        model = RewardModel.from_settings(settings)
        mlflow.log_params(
            {
                "reward.n_train": len(train),
                "reward.n_val": len(val),
                **{
                    f"reward.labelled_train_{a}": int(c)
                    for a, c in zip(aspects, train.labelled_count(), strict=True)
                },
            }
        )

        def on_epoch(epoch: int, record: dict[str, Any]) -> None:
            mlflow.log_metrics(
                {
                    k: float(v)
                    for k, v in record.items()
                    if k != "epoch" and v is not None and math.isfinite(v)
                },
                step=epoch,
            )

        result = fit(model, train, val, settings, on_epoch=on_epoch, progress=progress)
        out_dir = layout.reward_model_dir
        model.save_pretrained(out_dir, keep_identical=True)
        summary = {
            "aspects": aspects,
            "weights": settings.aspect_weights,
            "encoder": settings.reward.encoder,
            "n_train": len(train),
            "n_val": len(val),
            "labelled_train": {a: int(c) for a, c in zip(aspects, train.labelled_count(), strict=True)},
            "model_dir": str(out_dir),
            "mlflow_run_id": run.info.run_id,
            **result,
        }
        mlflow.log_metrics(
            {
                "best_val_loss": float(result["best_val_loss"]),
                "train_seconds": float(result["train_seconds"]),
                **{f"best_val_r2_{a}": float(v) for a, v in result["val_r2"].items() if v is not None},
            }
        )
        mlflow.log_artifacts(str(out_dir), artifact_path="reward_model")
        # a rerun that trained the same model keeps the file (and run id) of the run that first did
        write_json_result(layout.metrics_file("train_reward"), summary, VOLATILE_SUMMARY_FIELDS)
    return {k: v for k, v in summary.items() if k != "history"}


def tracking_run(settings: Settings) -> Any:
    from safealign.tracking import stage_run

    return stage_run(settings, "train_reward")
