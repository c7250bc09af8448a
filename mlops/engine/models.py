"""Model construction from a :class:`TrainConfig`."""

from __future__ import annotations

from torch import nn

from mlops.engine.spec import ACTIVATIONS, MAX_HIDDEN_LAYERS, MAX_HIDDEN_WIDTH, TASKS, TrainConfig

_ACTIVATION_CLASSES: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def build_model(*, n_features: int, n_classes: int, config: TrainConfig) -> nn.Module:
    """An MLP ``n_features → hidden_sizes… → n_classes`` as an ``nn.Sequential``.

    Binary classification uses two logits and cross-entropy, like multi-class, so one
    loss and one clipping path serve both tasks.
    """
    if config.task not in TASKS:
        raise ValueError(f"task: must be one of {', '.join(TASKS)}")
    if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 1:
        raise ValueError("n_features: the data has no feature columns")
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
        raise ValueError("n_classes: classification needs at least two classes")
    if config.task == "binary" and n_classes != 2:
        raise ValueError(f"task: binary classification needs exactly two classes, the data has {n_classes}")
    if config.activation not in ACTIVATIONS:
        raise ValueError(f"activation: must be one of {', '.join(ACTIVATIONS)}")
    hidden = list(config.hidden_sizes)
    if len(hidden) > MAX_HIDDEN_LAYERS:
        raise ValueError(f"hidden_sizes: at most {MAX_HIDDEN_LAYERS} hidden layers")
    if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 or w > MAX_HIDDEN_WIDTH for w in hidden):
        raise ValueError(f"hidden_sizes: must be integers between 1 and {MAX_HIDDEN_WIDTH}")
    if not 0.0 <= config.dropout < 1.0:
        raise ValueError("dropout: must be at least 0 and below 1")

    layers: list[nn.Module] = []
    width_in = n_features
    for width in hidden:
        layers.append(nn.Linear(width_in, width))
        layers.append(_ACTIVATION_CLASSES[config.activation]())
        if config.dropout > 0:
            layers.append(nn.Dropout(config.dropout))
        width_in = width
    layers.append(nn.Linear(width_in, n_classes))
    return nn.Sequential(*layers)
