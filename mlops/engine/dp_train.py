"""DP-SGD training of tabular MLPs with Opacus accounting.

How a private step works (Abadi et al. 2016, as implemented by Opacus):

1. Poisson sampling: every training example joins the batch independently with
   probability ``q = batch_size / N``, drawn from a seeded generator as the geometric
   gaps between the examples taken (:func:`poisson_indices`; the distribution of a
   Bernoulli mask over all N rows, from about q·N uniforms; no per-sample DataLoader).
2. Per-example gradients are clipped to L2 norm ``max_grad_norm`` (C) with Opacus's
   factor ``min(1, C / (‖g_i‖ + 1e-6))`` and summed.
3. Gaussian noise ``N(0, σ²C²)`` is added to the clipped sum, which is then divided by the
   expected batch size ``q·N``.
4. Opacus's accountant (RDP by default, PRV allowed) records ``(σ, q)`` for the step.

Clipping path. For the MLPs :func:`mlops.engine.models.build_model` builds, every
parameter lives in an ``nn.Linear`` on 2-D inputs, where the per-example weight gradient
is the outer product ``g_i a_iᵀ`` of the output gradient and the layer input. Its norm is
therefore ``‖g_i‖·‖a_i‖`` and the clipped sum over the batch is ``(c ⊙ G)ᵀ A``: one
matrix product per layer, no per-example gradient tensor is ever materialised. This is
exact (tests compare it with Opacus's hooks-mode per-sample gradients and DPOptimizer on
the same batch). Any other module with parameters falls back to Opacus's
``GradSampleModule`` (hooks) with Opacus's ``DPOptimizer`` doing the clipping and noise.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from opacus.accountants import create_accountant
from opacus.grad_sample import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch import nn

from mlops.engine import accounting
from mlops.engine.models import build_model
from mlops.engine.spec import TrainConfig

CLIPPING_PATHS = ("auto", "linear", "opacus")
# Opacus adds this to the per-sample norm before dividing; kept identical so both paths
# clip the same way.
_NORM_EPS = 1e-6
_EVAL_CHUNK = 65536
# Uniforms drawn per round of poisson_indices beyond the expected count, in standard
# deviations (6: a second round about once in 10⁹ draws).
_POISSON_MARGIN_SD = 6.0


@dataclass
class EpochReport:
    """One epoch's figures. ``loss`` and ``train_accuracy`` are the mean loss and the share
    classified correctly over the examples the epoch's steps sampled, each taken from the
    step's own forward pass (before its update), as Keras and Lightning report training
    figures; they are computed on training data and are not covered by ε, and are None when
    ``train(train_metrics=False)``. ``val_accuracy`` is the model's at the end of the epoch,
    on held-out people."""

    epoch: int
    steps: int
    loss: float | None
    train_accuracy: float | None
    val_accuracy: float | None
    epsilon: float


@dataclass
class EpochFigures:
    """What :meth:`Trainer.run_epoch` saw: examples sampled, and (when asked) the mean loss
    and the accuracy over them."""

    seen: int
    loss: float | None = None
    accuracy: float | None = None


@dataclass
class TrainResult:
    state_dict: dict[str, torch.Tensor]
    epochs: list[EpochReport]
    noise_multiplier: float | None
    sample_rate: float
    steps: int
    accountant_history: list[list[float]]
    epsilon: float
    delta: float
    stopped: bool = False  # should_stop() asked to end before the last epoch
    clipping: str = "none"  # "linear" (exact fast path), "opacus" (hooks) or "none" (not private)
    accountant: str = "rdp"
    per_epoch_seconds: list[float] = field(default_factory=list)


def check_tensors(
    *, X: torch.Tensor, y: torch.Tensor, n_classes: int, name: str = "train", n_features: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 features and int64 labels, or a ValueError naming what is wrong."""
    if not isinstance(X, torch.Tensor) or X.dim() != 2:
        raise ValueError(f"X_{name}: must be a 2-D tensor [examples, features]")
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or len(y) != len(X):
        raise ValueError(f"y_{name}: must be a 1-D tensor with one label per row of X_{name}")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"X_{name}: has {X.shape[1]} features, expected {n_features}")
    X = X.to(torch.float32).contiguous()
    if not torch.isfinite(X).all():
        raise ValueError(f"X_{name}: contains NaN or infinite values")
    if y.dtype.is_floating_point and not torch.equal(y, y.round()):
        raise ValueError(f"y_{name}: labels must be integers")
    y = y.to(torch.int64).contiguous()
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(f"y_{name}: labels must lie in 0..{n_classes - 1}")
    return X, y


def resolve_noise_multiplier(*, config: TrainConfig, n_train: int) -> float | None:
    """σ for the run: given, or derived from target ε by Opacus over the planned steps."""
    if not config.private:
        return None
    if config.noise_multiplier is not None:
        return float(config.noise_multiplier)
    return accounting.noise_multiplier_for(
        target_epsilon=float(config.target_epsilon),
        target_delta=config.target_delta,
        sample_rate=config.sample_rate(n_train),
        steps=config.total_steps(n_train),
        accountant=config.accountant,
    )


def supports_linear_clipping(model: nn.Module) -> bool:
    """True when the exact outer-product clipping applies: a Sequential whose only
    parameterised modules are ``nn.Linear``."""
    if not isinstance(model, nn.Sequential):
        return False
    for module in model:
        if isinstance(module, nn.Linear):
            continue
        if any(True for _ in module.parameters()) or isinstance(module, nn.Sequential):
            return False
    return True


def _functional(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The parameter-free module as a plain function: skips nn.Module call overhead, which
    dominates a step of a small MLP."""
    if isinstance(module, nn.ReLU):
        return torch.relu
    if isinstance(module, nn.Tanh):
        return torch.tanh
    if isinstance(module, nn.GELU):
        approximate = module.approximate
        return lambda h: F.gelu(h, approximate=approximate)
    if isinstance(module, nn.Dropout):
        # Evaluated at call time so model.train()/eval() still switches dropout.
        return lambda h: F.dropout(h, module.p, module.training, module.inplace)
    return module


def _functional_forward(model: nn.Sequential) -> Callable[[torch.Tensor], torch.Tensor]:
    """The Sequential's forward pass as a chain of plain calls (see :func:`_functional`)."""
    plan = [module if isinstance(module, nn.Linear) else _functional(module) for module in model]

    def forward(h: torch.Tensor) -> torch.Tensor:
        for fn in plan:
            if isinstance(fn, nn.Linear):
                h = F.linear(h, fn.weight, fn.bias)
            else:
                h = fn(h)
        return h

    return forward


class LinearClipper:
    """Exact per-example clipping for a Sequential whose only parameters are in ``nn.Linear``.

    For a Linear layer on 2-D input the per-example gradients are ``g_i a_iᵀ`` (weight)
    and ``g_i`` (bias), where ``a_i`` is the layer's input and ``g_i`` the gradient of
    example i's loss with respect to the layer's output. Hence
    ``‖grad_i‖² = Σ_layers ‖g_i‖²(‖a_i‖² + 1)`` and, with Opacus's clip factors
    ``c_i = min(1, C / (‖grad_i‖ + 1e-6))``, the clipped sums are ``(c ⊙ G)ᵀ A`` and
    ``Gᵀ c``: one matrix product per layer, no per-example gradient is materialised.
    """

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        self.plan: list[tuple[nn.Linear | None, Callable[[torch.Tensor], torch.Tensor] | None]] = []
        self.parameters: list[torch.Tensor] = []
        for layer in layers:
            if isinstance(layer, nn.Linear):
                self.plan.append((layer, None))
                self.parameters.append(layer.weight)
                if layer.bias is not None:
                    self.parameters.append(layer.bias)
            elif not isinstance(layer, nn.Identity):
                if any(True for _ in layer.parameters()):
                    raise ValueError("clipping: the exact linear path needs an MLP of nn.Linear layers")
                self.plan.append((None, _functional(layer)))

    def __call__(
        self, *, X: torch.Tensor, y: torch.Tensor, max_grad_norm: float, input_sq_norms: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(summed loss, clipped gradient sum per parameter in ``parameters()`` order).

        ``input_sq_norms`` may carry ``‖x_i‖²`` precomputed for the batch: the first
        layer's inputs never change between epochs.
        """
        loss, grads, _ = self.step(X=X, y=y, max_grad_norm=max_grad_norm, input_sq_norms=input_sq_norms)
        return loss, grads

    def step(
        self, *, X: torch.Tensor, y: torch.Tensor, max_grad_norm: float, input_sq_norms: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """As ``__call__``, and the batch's logits (detached) for the epoch's figures."""
        inputs: list[torch.Tensor] = []
        outputs: list[torch.Tensor] = []
        has_bias: list[bool] = []
        h = X
        for linear, fn in self.plan:
            if linear is not None:
                inputs.append(h.detach())
                bias = linear.bias
                has_bias.append(bias is not None)
                h = F.linear(h, linear.weight, bias)
                outputs.append(h)
            else:
                h = fn(h)
        loss = F.cross_entropy(h, y, reduction="sum")
        # The loss is a sum of per-example losses, so row i of each output gradient
        # belongs to example i alone.
        out_grads = torch.autograd.grad(loss, outputs)
        norms_sq: torch.Tensor | None = None
        for index, (a, g, bias) in enumerate(zip(inputs, out_grads, has_bias, strict=True)):
            if index == 0 and input_sq_norms is not None:
                a_sq = input_sq_norms
            else:
                # Row-wise dot products: one kernel, and no square root squared again.
                a_sq = torch.linalg.vecdot(a, a)
            if bias:
                a_sq = a_sq + 1.0
            term = torch.linalg.vecdot(g, g).mul_(a_sq)
            norms_sq = term if norms_sq is None else norms_sq.add_(term)
        clip = (max_grad_norm / norms_sq.sqrt_().add_(_NORM_EPS)).clamp_(max=1.0)
        column = clip.unsqueeze(1)
        grads: list[torch.Tensor] = []
        for a, g, bias in zip(inputs, out_grads, has_bias, strict=True):
            # Scale whichever factor is narrower: the same product, fewer multiplications.
            if g.shape[1] <= a.shape[1]:
                grads.append((g * column).t().mm(a))
            else:
                grads.append(g.t().mm(a * column))
            if bias:
                grads.append(g.t().mv(clip))
        return loss.detach(), grads, h.detach()


def clipped_grad_sum_linear(
    *,
    layers: Sequence[nn.Module],
    X: torch.Tensor,
    y: torch.Tensor,
    max_grad_norm: float,
    input_sq_norms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Sum over the batch of per-example gradients clipped to ``max_grad_norm``
    (see :class:`LinearClipper`); returns the summed loss and one gradient per parameter."""
    return LinearClipper(layers)(X=X, y=y, max_grad_norm=max_grad_norm, input_sq_norms=input_sq_norms)


def poisson_indices(*, n: int, sample_rate: float, generator: torch.Generator) -> torch.Tensor:
    """The sorted indices of a Poisson sample of ``range(n)``: each index independently with
    probability ``sample_rate``, as DP-SGD's analysis assumes.

    Drawn as the gaps between the indices taken rather than as one Bernoulli mask over all
    ``n`` rows: the gaps of a Bernoulli(q) sequence are independent Geometric(q) variables,
    and ``floor(log(1 − U) / log(1 − q))`` for ``U`` uniform on [0, 1) is Geometric(q)
    exactly (``P(G ≥ j) = P(1 − U ≤ (1 − q)^j) = (1 − q)^j``). So the sample has the same
    distribution as ``torch.rand(n) < q`` (with U in float64, q is not even rounded to
    float32's 2⁻²⁴ grid as the mask's is), from about ``q·n`` uniforms instead of ``n``:
    about 0.05 ms instead of 0.14–0.2 ms per step at n = 16,384, q = 1/64. Deterministic for the
    generator's state; it consumes the generator differently from a mask, so seeded
    weights differ from an engine that drew masks (both are correct).
    """
    if sample_rate >= 1.0:
        return torch.arange(n)
    log_keep = math.log1p(-sample_rate)
    parts: list[torch.Tensor] = []
    start = 0  # the first index not yet decided
    while True:
        expected = (n - start) * sample_rate
        # Enough uniforms to pass the end of the range but for a ~1e-9 chance; when they
        # fall short the loop draws more from where they stopped.
        k = max(1, int(expected + _POISSON_MARGIN_SD * math.sqrt(expected)) + 16)
        u = torch.rand(k, dtype=torch.float64, generator=generator)
        gaps = u.neg_().log1p_().div_(log_keep).floor_()
        positions = gaps.add_(1.0).cumsum_(0).add_(start - 1)
        count = int(torch.searchsorted(positions, float(n)))
        if count < k:
            parts.append(positions[:count])
            break
        parts.append(positions)
        start = int(positions[-1]) + 1
    return (parts[0] if len(parts) == 1 else torch.cat(parts)).long()


class Trainer:
    """One training run's state: the model, the sampler, the optimiser and the accountant.

    Exposed so the benchmark can time bare epochs of the private and the non-private
    step on identical data; :func:`train` is the entry point for everything else.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        X: torch.Tensor,
        y: torch.Tensor,
        config: TrainConfig,
        noise_multiplier: float | None,
        generator: torch.Generator,
        clipping: str = "auto",
    ) -> None:
        if clipping not in CLIPPING_PATHS:
            raise ValueError(f"clipping: must be one of {', '.join(CLIPPING_PATHS)}")
        self.X, self.y, self.config = X, y, config
        self.n = len(X)
        self.sample_rate = config.sample_rate(self.n)
        self.steps_per_epoch = config.steps_per_epoch(self.n)
        self.expected_batch_size = config.batch_size
        self.noise_multiplier = noise_multiplier
        self.generator = generator
        self.private = config.private
        self.accountant = create_accountant(mechanism=config.accountant) if self.private else None
        self.model = model
        self.steps_done = 0
        self._seen: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        if not self.private:
            self.clipping = "none"
        elif clipping == "opacus" or (clipping == "auto" and not supports_linear_clipping(model)):
            self.clipping = "opacus"
        else:
            if not supports_linear_clipping(model):
                raise ValueError("clipping: the exact linear path needs an MLP of nn.Linear layers")
            self.clipping = "linear"

        if self.clipping == "opacus":
            # loss_reduction="sum" keeps per-sample gradients unscaled; the optimiser then
            # divides by the expected batch size, as Opacus does for mean-reduced losses.
            self.grad_module = GradSampleModule(model, batch_first=True, loss_reduction="sum")
            base = _make_optimizer(self.grad_module.parameters(), config)
            self.optimizer = DPOptimizer(
                base,
                noise_multiplier=noise_multiplier,
                max_grad_norm=config.max_grad_norm,
                expected_batch_size=self.expected_batch_size,
                loss_reduction="mean",
                generator=generator,
            )
        else:
            self.optimizer = _make_optimizer(model.parameters(), config)
        if self.clipping == "linear":
            self._input_sq_norms = torch.linalg.vecdot(X, X)
            self._clipper = LinearClipper(list(model))
            self.params = self._clipper.parameters
        # Plain SGD's step on CPU is `p.add_(grad, alpha=-lr)` per parameter with a gradient
        # (torch.optim.sgd._single_tensor_sgd); doing exactly that here, on the private and
        # the non-private path alike, skips the optimiser's per-step bookkeeping.
        self._sgd_lr = -float(config.learning_rate) if config.optimizer == "sgd" else None
        self._plain_params = [p for p in model.parameters() if p.requires_grad]
        self._forward = _functional_forward(model) if supports_linear_clipping(model) else model

    def _sample_index(self) -> torch.Tensor:
        """Poisson sampling: each row independently with probability sample_rate."""
        return poisson_indices(n=self.n, sample_rate=self.sample_rate, generator=self.generator)

    def _sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self._sample_index()
        return self.X.index_select(0, idx), self.y.index_select(0, idx)

    def run_epoch(self, *, metrics: bool = False) -> EpochFigures:
        """Train one epoch of Poisson-sampled steps.

        ``metrics=True`` also returns the epoch's mean loss and accuracy over the examples
        it sampled, each as the model classified it in the step's own forward pass (before
        that step's update): figures on training data that cost no extra pass over it.
        """
        self.model.train()
        losses: list[torch.Tensor] = []
        # The steps append their (detached) logits and labels here; reduced once per epoch,
        # so a step pays no extra dispatch for the figures.
        self._seen = [] if metrics else None
        seen = 0
        step = {"none": self._step_plain, "linear": self._step_linear, "opacus": self._step_opacus}[self.clipping]
        accountant_step = self.accountant.step if self.accountant is not None else None
        for _ in range(self.steps_per_epoch):
            idx = self._sample_index()
            xb, yb = self.X.index_select(0, idx), self.y.index_select(0, idx)
            losses.append(step(xb, yb, idx))
            seen += len(idx)
            if accountant_step is not None:
                accountant_step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
            self.steps_done += 1
        figures = EpochFigures(seen=seen)
        if metrics and seen:
            figures.loss = float(torch.stack(losses).to(torch.float64).sum()) / seen
            logits = torch.cat([z for z, _ in self._seen])
            labels = torch.cat([t for _, t in self._seen])
            figures.accuracy = int((logits.argmax(1) == labels).sum()) / seen
        elif metrics:
            figures.loss = figures.accuracy = float("nan")
        self._seen = None
        return figures

    def _record(self, logits: torch.Tensor, yb: torch.Tensor) -> None:
        if self._seen is not None and len(yb):
            self._seen.append((logits.detach(), yb))

    def _step_plain(self, xb: torch.Tensor, yb: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        if self._sgd_lr is None:
            self.optimizer.zero_grad(set_to_none=True)
        if len(xb) == 0:
            return torch.zeros(())
        logits = self._forward(xb)
        self._record(logits, yb)
        loss = F.cross_entropy(logits, yb, reduction="sum")
        if self._sgd_lr is None:
            (loss / len(xb)).backward()
            self.optimizer.step()
            return loss.detach()
        # Plain SGD: the gradients straight from autograd.grad, the same values backward()
        # would leave in .grad, without accumulating them there and clearing them again.
        grads = torch.autograd.grad(loss / len(xb), self._plain_params)
        with torch.no_grad():
            for p, grad in zip(self._plain_params, grads, strict=True):
                p.add_(grad, alpha=self._sgd_lr)
        return loss.detach()

    def _step_linear(self, xb: torch.Tensor, yb: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        loss, grads, logits = self._clipper.step(
            X=xb,
            y=yb,
            max_grad_norm=self.config.max_grad_norm,
            input_sq_norms=self._input_sq_norms.index_select(0, idx) if idx is not None else None,
        )
        self._record(logits, yb)
        std = self.noise_multiplier * self.config.max_grad_norm
        scale = 1.0 / self.expected_batch_size
        # Noise is drawn per parameter in model.parameters() order, the order Opacus's
        # DPOptimizer draws it in, so both paths consume the generator identically.
        if self._sgd_lr is not None:
            # Plain SGD: p -= lr · (clipped sum + noise) / expected batch size, the division
            # folded into the step size (one pass over each parameter instead of two).
            alpha = self._sgd_lr * scale
            with torch.no_grad():
                for p, grad in zip(self.params, grads, strict=True):
                    p.add_(self._noised(grad, std), alpha=alpha)
            return loss
        for p, grad in zip(self.params, grads, strict=True):
            p.grad = self._noised(grad, std).mul_(scale)
        self.optimizer.step()
        return loss

    def _noised(self, grad: torch.Tensor, std: float) -> torch.Tensor:
        """``grad + N(0, std²)`` from the run's generator: the linear path's only noise.

        One seam so the canary audit's tests can switch the noise off and check the audit
        catches it (mlops.engine.canary).
        """
        # normal(mean=grad) draws N(0, std²) exactly as normal(0, std, shape) does and adds grad.
        return torch.normal(grad, std, generator=self.generator)

    def _step_opacus(self, xb: torch.Tensor, yb: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.grad_module(xb)
        self._record(logits, yb)
        loss = F.cross_entropy(logits, yb, reduction="sum")
        with warnings.catch_warnings():
            # Inputs never require grad here, which makes PyTorch warn about Opacus's
            # full backward hooks on the first layer; the per-sample gradients are right.
            warnings.filterwarnings("ignore", message="Full backward hook", category=UserWarning)
            loss.backward()
        self.optimizer.step()
        return loss.detach()

    def epsilon(self, delta: float) -> float:
        if self.accountant is None:
            return math.inf
        if not self.accountant.history:
            return 0.0
        return float(self.accountant.get_epsilon(delta=delta))

    def history(self) -> list[list[float]]:
        if self.accountant is None:
            return []
        return [[float(s), float(q), int(n)] for s, q, n in self.accountant.history]


def _make_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.learning_rate)
    return torch.optim.SGD(params, lr=config.learning_rate)


def _accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    if len(X) == 0:
        return float("nan")
    correct = 0
    with torch.no_grad():
        for start in range(0, len(X), _EVAL_CHUNK):
            logits = model(X[start : start + _EVAL_CHUNK])
            correct += int((logits.argmax(1) == y[start : start + _EVAL_CHUNK]).sum())
    return correct / len(X)


def train(
    *,
    X_train: torch.Tensor,
    y_train: torch.Tensor,
    X_val: torch.Tensor | None,
    y_val: torch.Tensor | None,
    n_classes: int,
    config: TrainConfig,
    on_epoch: Callable[[EpochReport], None] | None = None,
    init_state: dict | None = None,
    should_stop: Callable[[], bool] | None = None,
    clipping: str = "auto",
    history_prefix: list[list[float]] | None = None,
    require_two_classes: bool = True,
    train_metrics: bool = True,
) -> TrainResult:
    """Train an MLP with DP-SGD (or plainly when ``config.private`` is False).

    Deterministic for ``config.seed``: the model initialisation, dropout, Poisson sampling
    and noise all draw from seeded generators, and the caller's global RNG state is
    restored afterwards. ``should_stop`` is asked before every epoch; when it answers True
    the result so far is returned with ``stopped=True``. ``history_prefix`` is accountant
    history spent before this call on the same records (SISA stages); it is composed into
    every ε reported. ``require_two_classes=False`` lets a SISA stage train on a slice
    that happens to hold one class (the shard as a whole is checked instead).
    ``train_metrics=False`` releases no figure computed on the training data (each epoch's
    ``loss`` and ``train_accuracy`` are None): those figures are outside the DP guarantee.
    The training itself is unchanged (same draws, bit-identical weights).
    """
    X_train, y_train = check_tensors(X=X_train, y=y_train, n_classes=n_classes, name="train")
    config.validate(len(X_train))
    if require_two_classes and torch.unique(y_train).numel() < 2:
        raise ValueError("y_train: the training data holds a single class; a classifier needs at least two")
    n_features = X_train.shape[1]
    if (X_val is None) != (y_val is None):
        raise ValueError("X_val: give both X_val and y_val, or neither")
    if X_val is not None:
        X_val, y_val = check_tensors(X=X_val, y=y_val, n_classes=n_classes, name="val", n_features=n_features)
    n = len(X_train)
    noise_multiplier = resolve_noise_multiplier(config=config, n_train=n)
    prefix = [list(h) for h in (history_prefix or [])]

    with torch.random.fork_rng(devices=[]), _intra_op_threads(TRAINING_THREADS):
        torch.manual_seed(config.seed)
        model = _dp_compatible(build_model(n_features=n_features, n_classes=n_classes, config=config))
        if init_state is not None:
            try:
                model.load_state_dict(init_state)
            except RuntimeError as exc:
                raise ValueError(f"init_state: does not fit the model spec ({exc.__class__.__name__})")
        generator = torch.Generator().manual_seed(config.seed)
        trainer = Trainer(
            model=model,
            X=X_train,
            y=y_train,
            config=config,
            noise_multiplier=noise_multiplier,
            generator=generator,
            clipping=clipping,
        )
        reports: list[EpochReport] = []
        seconds: list[float] = []
        stopped = False
        for epoch in range(1, config.epochs + 1):
            if should_stop is not None and should_stop():
                stopped = True
                break
            start = time.perf_counter()
            # The training figures come from the steps' own forward passes: a pass over the
            # whole training set after every epoch cost a third of a plain epoch for the
            # 100→256→256→2 MLP. Recording them draws no random number and changes no
            # weight, so train_metrics=False trains bit-identically.
            figures = trainer.run_epoch(metrics=train_metrics)
            seconds.append(time.perf_counter() - start)
            val_acc = None
            if X_val is not None:
                model.eval()
                val_acc = _accuracy(model, X_val, y_val)
            eps = _epsilon(prefix + trainer.history(), config) if config.private else math.inf
            report = EpochReport(
                epoch=epoch,
                steps=trainer.steps_done,
                loss=figures.loss,
                train_accuracy=figures.accuracy,
                val_accuracy=val_acc,
                epsilon=eps,
            )
            reports.append(report)
            if on_epoch is not None:
                on_epoch(report)
        model.eval()

    history = trainer.history()
    epsilon = _epsilon(prefix + history, config) if config.private else math.inf
    return TrainResult(
        state_dict={k: v.detach().clone() for k, v in _unwrapped(model).state_dict().items()},
        epochs=reports,
        noise_multiplier=noise_multiplier,
        sample_rate=trainer.sample_rate,
        steps=trainer.steps_done,
        accountant_history=history,
        epsilon=epsilon,
        delta=config.target_delta,
        stopped=stopped,
        clipping=trainer.clipping,
        accountant=config.accountant,
        per_epoch_seconds=seconds,
    )


# Training runs single-threaded: the models are small MLPs whose every operation costs
# less than waking a second thread (a step is ~25% faster on one), a reduction's order —
# and so the last bits of the weights — must not depend on how many cores the machine
# has (SISA unlearning is checked bit-identical to retraining from scratch, possibly on
# another worker), and throughput comes from more Celery workers, one run each.
TRAINING_THREADS = 1


@contextlib.contextmanager
def _intra_op_threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _epsilon(history: list[list[float]], config: TrainConfig) -> float:
    return accounting.epsilon_of_history(history=history, delta=config.target_delta, accountant=config.accountant)


def _dp_compatible(model: nn.Module) -> nn.Module:
    """``ModuleValidator.fix(model)``, without its copy when there is nothing to fix.

    ``fix`` clones the whole module (a torch.save/torch.load round trip, ~7 ms, a fifth of
    a small MLP's epoch) and then replaces only the sub-modules whose type has a registered
    fixer (BatchNorm, LSTM, ...). With none of those the clone is all it returns, and the
    model here is freshly built and owned by the caller, so it is used as it is.
    """
    if any(type(module) in ModuleValidator.FIXERS for module in model.modules()):
        return ModuleValidator.fix(model)
    return model


def _unwrapped(model: nn.Module) -> nn.Module:
    return model._module if isinstance(model, GradSampleModule) else model


def load_model(
    *, state_dict: dict[str, torch.Tensor], n_features: int, n_classes: int, config: TrainConfig
) -> nn.Module:
    """Rebuild a trained model from its saved weights, in evaluation mode."""
    model = _dp_compatible(build_model(n_features=n_features, n_classes=n_classes, config=config))
    model.load_state_dict(state_dict)
    model.eval()
    return model


def predict_proba(*, model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """Class probabilities ``[N, n_classes]``; the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    X = X.to(torch.float32)
    try:
        with torch.no_grad():
            parts = [torch.softmax(model(X[s : s + _EVAL_CHUNK]), dim=1) for s in range(0, len(X), _EVAL_CHUNK)]
    finally:
        model.train(was_training)
    if not parts:
        return torch.zeros((0, _n_outputs(model)))
    return torch.cat(parts)


def _n_outputs(model: nn.Module) -> int:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else 0
