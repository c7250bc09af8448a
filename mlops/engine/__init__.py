"""Differentially private training engine: pure PyTorch + Opacus, no Django.

The Django side (mlops.services, mlops.tasks) loads a snapshot into tensors and calls
:func:`mlops.engine.dp_train.train`, :mod:`mlops.engine.accounting` for the privacy-budget
ledger, :mod:`mlops.engine.mia` for the membership-inference audit and
:mod:`mlops.engine.sisa` for shard-wise training that supports exact unlearning.
"""
