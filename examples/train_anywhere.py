"""Train anywhere: a CNN trained with Opacus on your own machine, governed by the ledger.

The ledger is the gate and the record: this script exports a consent-filtered snapshot,
reserves privacy budget, trains a small convolutional network with DP-SGD (Opacus) here,
reports what Opacus's accountant recorded, and checks that the registered model may be served.
It needs only the client (``pip install "./clients/python[torch]"``), the ledger's URL and an
API key of a role that may train (ml_engineer or dpo). Against ``make run``:

    export LEDGER_URL=http://127.0.0.1:8000
    export LEDGER_API_KEY=$(.venv/bin/python manage.py create_api_key --user pipeline --role ml_engineer)
    python examples/train_anywhere.py --snapshot 12

With ``--mlflow`` (the ``mlflow`` extra, MLFLOW_TRACKING_URI set) the MLflow run shows the
snapshot as its dataset input and carries the ledger's ids. ``--json`` prints one JSON line
for a program (the end-to-end test reads it). See docs/client.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

import torch
from privacy_ledger_client import LedgerClient, LedgerError
from torch import nn
from torch.utils.data import DataLoader


class FeatureCNN(nn.Module):
    """Conv1d over the feature vector read as a one-channel signal, then a linear head.

    Any module Opacus supports works the same way (Conv2d, embeddings, GroupNorm, LSTM via
    opacus.layers, ...); BatchNorm does not (per-example gradients), use GroupNorm."""

    def __init__(self, n_features: int, n_classes: int, channels: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, channels, kernel_size=3, padding=1)
        self.pool = nn.AdaptiveAvgPool1d(4)
        self.head = nn.Linear(channels * 4, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x.unsqueeze(1)))
        return self.head(self.pool(h).flatten(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("LEDGER_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--api-key", default=os.environ.get("LEDGER_API_KEY"))
    parser.add_argument("--snapshot", type=int, required=True, help="id of a consent-filtered snapshot")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--target-epsilon", type=float, default=3.0)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--artifact", default="model.pt", help="where the trained state_dict is saved")
    parser.add_argument("--name", default="cnn-trained-anywhere")
    parser.add_argument("--mlflow", action="store_true", help="log the run to MLflow (the mlflow extra)")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    args = parser.parse_args(argv)
    if not args.api_key:
        parser.error("give --api-key or set LEDGER_API_KEY")

    torch.manual_seed(0)
    ledger = LedgerClient(args.url, args.api_key)
    # The snapshot's current members (after any erasure), checked against its Merkle root.
    data = ledger.snapshot_dataset(args.snapshot)
    model = FeatureCNN(data.features.shape[1], int(data.labels.max()) + 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)

    mlflow_run = contextlib.nullcontext()
    if args.mlflow:
        import mlflow
        from privacy_ledger_client.mlflow import log_snapshot_input

        mlflow_run = mlflow.start_run(run_name=args.name)
    try:
        with mlflow_run:
            if args.mlflow:
                log_snapshot_input(ledger, args.snapshot, merkle_root=data.merkle_root)
            # Reserves the budget, and makes the model, optimizer and loader private with the
            # ledger's noise multiplier; reports on leaving the block, fails the run on an error.
            with ledger.private_training(
                snapshot=args.snapshot, name=args.name, target_epsilon=args.target_epsilon, epochs=args.epochs,
                batch_size=args.batch_size, module=model, optimizer=optimizer,
                data_loader=DataLoader(data, batch_size=args.batch_size), max_grad_norm=1.0,
                artifact_path=args.artifact, description="Conv1d over the features, DP-SGD (examples/train_anywhere.py)",
            ) as training:
                for _ in range(args.epochs):
                    for x, y in training.data_loader:
                        training.optimizer.zero_grad()
                        nn.functional.cross_entropy(training.model(x), y).backward()
                        training.optimizer.step()
                with torch.no_grad():
                    accuracy = (training.model(data.features).argmax(1) == data.labels).float().mean().item()
                # A figure on the training data; a held-out one is what to publish.
                training.metrics["train_accuracy"] = accuracy
                engine_epsilon = training.get_epsilon()
                history = training.history
            if args.mlflow:
                from privacy_ledger_client.mlflow import tag_ledger_ids

                tag_ledger_ids(training.result)
    except LedgerError as refused:
        print(f"The ledger refused: {refused}", file=sys.stderr)
        return 2

    version = training.result.model_version
    status = ledger.model_status(training.result.model_version_id)
    if args.json:
        print(json.dumps({
            "history": history, "engine_epsilon": engine_epsilon, "delta": training.run.target_delta,
            "planned_epsilon": training.run.planned_epsilon, "run_id": training.run.id, "model_version": version,
            "servable": status.servable, "status": status.status, "merkle_root": data.merkle_root,
            "records": len(data), "artifact": str(training.artifact_path),
        }))
    else:
        print(f"Trained on snapshot {args.snapshot} ({len(data)} records, Merkle root {data.merkle_root[:12]}…)")
        print(f"Opacus history {history}: ε = {engine_epsilon:.4f} at δ = {training.run.target_delta:g}")
        print(f"Registered {version['name']} v{version['version']} (id {version['id']}): ε = {version['epsilon']:.4f}, "
              f"status {status.status}, servable: {status.servable}; weights in {training.artifact_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
