"""Batched gradient kernels: the mini-batch gradients of T tasks, each at its own model version,
in one call.

A kernel maps ``W`` (T, P), one flat parameter vector per task (any float dtype), and ``idx``
(T, B), each task's mini-batch as indices into the client-ordered training set, to ``G``
(T, P): row t is the gradient of the mean cross-entropy of batch t at ``W[t]``, what autograd
gives for that task alone.

- :class:`DenseKernel` (the built-in ``logistic`` and ``mlp``): forward and backward written
  out with batched matrix products, activations as columns. Per layer z = W a + b
  (``baddbmm``), a' = relu(z); at the output dL/dz = (softmax(z) - onehot(y)) / B; backward
  dW = dz a^T, db = sum_b dz, da = (W^T dz) masked by a > 0. That is about 15 + 6 (L - 1)
  tensor operations for the T tasks of an L-layer network, where autograd and an optimizer
  step spend about 23 per task for one layer.
- :class:`ConvKernel` (the built-in ``cnn``): activations of the T tasks side by side along
  the channels; on CUDA the tasks' convolutions run as one grouped convolution
  (``groups = T``), on the CPU one per task (a grouped convolution rounds differently from a
  single one there, and the CPU's convolutions are bound by arithmetic, not by calls);
  backward through ``aten.convolution_backward`` and ``aten.max_pool2d_with_indices_backward``;
  the dense head as in :class:`DenseKernel`.
- :class:`VmapKernel` (any other module): ``torch.func.vmap`` over ``torch.func.grad`` of the
  loss of ``functional_call``. It cannot apply to every module (stochastic layers, buffers
  updated in place, data-dependent control flow): :func:`make_kernel` tries it on two tasks
  and otherwise reports why.

Exactness. In the built-in kernels every task's products are GEMMs (and, on the CPU,
convolutions) of the same shapes whatever T, reductions run along the same axis, elementwise
operations are unfused, and ``exp`` runs row by row (:func:`_softmax_columns`), so on the CPU
row t of ``G`` does not depend on T or on the other rows, bit for bit (tested in float32 and
float64), provided the BLAS rounds a GEMM the same wherever its operands lie in memory: MKL
does in its reproducible mode (environment variable ``MKL_CBWR=COMPATIBLE``, set before torch
is imported; the tests set it), but its default AVX-512 kernels may round a task's product
differently with the alignment of its slice of the batch, so batched and task-by-task runs
then agree to rounding only. On CUDA, cuBLAS and cuDNN may pick
other algorithms for another T, which can change the roundings (not measured). ``vmap``
turns convolutions into grouped ones, so the vmap kernel is bit-exact across T for dense
layers only.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.training.flat import FlatModel

def _dense_layers(modules: list[nn.Module]) -> list[nn.Linear] | None:
    """The Linear layers of [Linear, ReLU, Linear, ..., Linear] (all with bias), else None."""
    linears = modules[0::2]
    if not modules or len(modules) % 2 == 0 or not all(type(m) is nn.Linear and m.bias is not None for m in linears):
        return None
    if not all(type(m) is nn.ReLU for m in modules[1::2]):
        return None
    return linears


class _Layout:
    """Where each parameter lies in the flat vector: ``slices[k]`` and ``shapes[k]``, in the
    order of ``module.parameters()``."""

    def __init__(self, flat: FlatModel) -> None:
        self.shapes = [tuple(s) for s in flat.shapes]
        ends = [0]
        for n in flat.numels:
            ends.append(ends[-1] + n)
        self.slices = [slice(a, b) for a, b in zip(ends[:-1], ends[1:])]

    def view(self, W: torch.Tensor, k: int) -> torch.Tensor:
        """Parameter k of every task: shape (T, *shape), a view of ``W``."""
        return W[:, self.slices[k]].view(W.shape[0], *self.shapes[k])


def _softmax_columns(z: torch.Tensor) -> torch.Tensor:
    """softmax over axis 1 of z (T, classes, B): e = exp(z - max), e / sum(e).

    ``exp`` is computed row by row (each row a view into a buffer one element wider, so torch
    cannot merge the rows into one long loop): its vectorised and scalar loops may round
    differently, and in one long loop which elements fall to the scalar tail depends on T.
    """
    T, c, B = z.shape
    e = torch.empty(T, c, B + 1, dtype=z.dtype, device=z.device)[:, :, :B]
    torch.sub(z, z.amax(1, keepdim=True), out=e)
    e.exp_()
    return e.div_(e.sum(1, keepdim=True))


def _dense_forward_backward(weights: list[torch.Tensor], biases: list[torch.Tensor], a: torch.Tensor,
                            labels: torch.Tensor, need_input_grad: bool
                            ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Gradients of the mean cross-entropy of a [Linear, ReLU, ..., Linear] network for T tasks.

    Activations are columns: ``a`` (T, in, B) holds each task's B inputs as columns, so the
    softmax and the reductions over classes run across the batch, which torch vectorises (over
    a last axis of a few classes, torch's softmax costs about 0.7 microseconds per row).
    ``weights[l]`` (T, out, in), ``biases[l]`` (T, out, 1), ``labels`` (T, 1, B). Returns
    [dW_0, db_0, dW_1, ...] (each (T, ...)) and, if asked, the gradient with respect to ``a``.
    """
    acts = [a]
    last = len(weights) - 1
    for l_, (w, b) in enumerate(zip(weights, biases)):
        z = torch.baddbmm(b, w, a)
        if l_ < last:
            a = z.relu_()
            acts.append(a)
    d = _softmax_columns(z)
    d.scatter_add_(1, labels, torch.full(labels.shape, -1.0, dtype=d.dtype, device=d.device))
    d.div_(labels.shape[2])
    grads: list[torch.Tensor] = []
    for l_ in range(last, -1, -1):
        grads[:0] = [torch.bmm(d, acts[l_].transpose(1, 2)), d.sum(2)]
        if l_ > 0 or need_input_grad:
            d = torch.bmm(weights[l_].transpose(1, 2), d)
            if l_ > 0:  # relu's backward: d where its output > 0, else 0
                d = torch.ops.aten.threshold_backward(d, acts[l_], 0)
    return grads, d if need_input_grad else None


class DenseKernel:
    """Batched gradients of ``Sequential(Flatten, Linear, ReLU, ..., Linear)`` (logistic, mlp)."""

    name = "dense"

    def __init__(self, flat: FlatModel, x: torch.Tensor, y: torch.Tensor) -> None:
        self.layout = _Layout(flat)
        self.layers = len(flat.params) // 2
        self.x, self.y = x, y
        self.activations = sum(m.out_features for m in _dense_layers(list(flat.module)[1:]) or [])

    @staticmethod
    def fits(module: nn.Module) -> bool:
        mods = list(module) if type(module) is nn.Sequential else []
        return bool(mods) and type(mods[0]) is nn.Flatten and _dense_layers(mods[1:]) is not None

    def task_bytes(self, batch: int, itemsize: int) -> int:
        """About the memory one task takes in a call (parameters, gradients, activations)."""
        return itemsize * (4 * self.layout.slices[-1].stop + 3 * batch * self.activations)

    def __call__(self, W: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        T, B = idx.shape
        rows = idx.reshape(-1)
        a = self.x.index_select(0, rows).view(T, B, -1).to(W.dtype).transpose(1, 2)
        labels = self.y.index_select(0, rows).view(T, 1, B)
        lay = self.layout
        weights = [lay.view(W, 2 * k) for k in range(self.layers)]
        biases = [lay.view(W, 2 * k + 1).unsqueeze(2) for k in range(self.layers)]
        grads, _ = _dense_forward_backward(weights, biases, a, labels, need_input_grad=False)
        return torch.cat([g.reshape(T, -1) for g in grads], dim=1)


class ConvKernel:
    """Batched gradients of the built-in cnn: ``Sequential(Sequential(Conv2d, ReLU, MaxPool2d, ...),
    Flatten, Linear, ReLU, ..., Linear)``."""

    name = "cnn"

    def __init__(self, flat: FlatModel, x: torch.Tensor, y: torch.Tensor) -> None:
        body, _, *head = list(flat.module)
        self.convs = list(body)[0::3]
        self.pools = list(body)[2::3]
        self.layout = _Layout(flat)
        self.dense = len(head) // 2 + 1
        self.x, self.y = x, y
        self.grouped = x.device.type == "cuda"
        with torch.no_grad():
            probe = torch.zeros(1, *x.shape[1:], device=x.device, dtype=flat.grad.dtype)
            sizes = []
            for layer in body:
                probe = layer(probe)
                sizes.append(probe.numel())
        self.activations = sum(sizes) + sum(m.out_features for m in head if type(m) is nn.Linear)

    @staticmethod
    def fits(module: nn.Module) -> bool:
        mods = list(module) if type(module) is nn.Sequential else []
        if len(mods) < 3 or type(mods[0]) is not nn.Sequential or type(mods[1]) is not nn.Flatten:
            return False
        body = list(mods[0])
        kinds = (nn.Conv2d, nn.ReLU, nn.MaxPool2d)
        if not body or len(body) % 3 or any(type(m) is not kinds[k % 3] for k, m in enumerate(body)):
            return False
        convs_ok = all(c.bias is not None and c.groups == 1 and c.padding_mode == "zeros"
                       and isinstance(c.padding, tuple) for c in body[0::3])
        pools_ok = all(not p.ceil_mode and not p.return_indices for p in body[2::3])
        return convs_ok and pools_ok and _dense_layers(mods[2:]) is not None

    def task_bytes(self, batch: int, itemsize: int) -> int:
        return itemsize * (4 * self.layout.slices[-1].stop + 3 * batch * self.activations)

    def __call__(self, W: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        T, B = idx.shape
        rows = idx.reshape(-1)
        x = self.x.index_select(0, rows).to(W.dtype)
        a = x.view(T, B, *x.shape[1:]).transpose(0, 1).reshape(B, T * x.shape[1], *x.shape[2:])
        lay, saved = self.layout, []
        for k, (conv, pool) in enumerate(zip(self.convs, self.pools)):
            w = lay.view(W, 2 * k).reshape(T * conv.out_channels, *conv.weight.shape[1:])
            b = lay.view(W, 2 * k + 1).reshape(-1)
            r = self._conv(a, w, b, conv, T).relu_()
            pooled, where = F.max_pool2d(r, pool.kernel_size, pool.stride, pool.padding, pool.dilation,
                                         return_indices=True)
            saved.append((a, w, r, where))
            a = pooled
        shape = a.shape
        feats = a.view(B, T, -1).permute(1, 2, 0)
        first = 2 * len(self.convs)
        weights = [lay.view(W, first + 2 * k) for k in range(self.dense)]
        biases = [lay.view(W, first + 2 * k + 1).unsqueeze(2) for k in range(self.dense)]
        labels = self.y.index_select(0, rows).view(T, 1, B)
        head, d = _dense_forward_backward(weights, biases, feats, labels, need_input_grad=True)
        d = d.permute(2, 0, 1).reshape(shape)
        body: list[torch.Tensor] = []
        for k in range(len(self.convs) - 1, -1, -1):
            conv, pool = self.convs[k], self.pools[k]
            a, w, r, where = saved[k]
            d = torch.ops.aten.max_pool2d_with_indices_backward(
                d, r, _pair(pool.kernel_size), _pair(pool.stride), _pair(pool.padding), _pair(pool.dilation), False,
                where)
            d.mul_(r > 0)
            d, gw, gb = self._conv_backward(d, a, w, conv, T, k > 0)
            body = [gw.reshape(T, -1), gb.reshape(T, -1), *body]
        return torch.cat([*body, *(g.reshape(T, -1) for g in head)], dim=1)

    def _conv(self, a: torch.Tensor, w: torch.Tensor, b: torch.Tensor, conv: nn.Conv2d, T: int) -> torch.Tensor:
        """Task t's convolution on channels t of ``a`` (B, T * in, H, W) -> (B, T * out, H', W')."""
        if self.grouped or T == 1:
            return F.conv2d(a, w, b, conv.stride, conv.padding, conv.dilation, groups=T)
        return torch.cat([F.conv2d(a_t, w_t, b_t, conv.stride, conv.padding, conv.dilation)
                          for a_t, w_t, b_t in zip(a.chunk(T, 1), w.chunk(T), b.chunk(T))], dim=1)

    def _conv_backward(self, d: torch.Tensor, a: torch.Tensor, w: torch.Tensor, conv: nn.Conv2d, T: int,
                       need_input: bool) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Gradients of :meth:`_conv` with respect to its input (if ``need_input``), weight and bias."""
        args = (list(conv.stride), list(conv.padding), list(conv.dilation), False, [0, 0])
        if self.grouped or T == 1:
            return torch.ops.aten.convolution_backward(d, a, w, [w.shape[0]], *args, T, [need_input, True, True])
        parts = [torch.ops.aten.convolution_backward(d_t, a_t, w_t, [w_t.shape[0]], *args, 1, [need_input, True, True])
                 for d_t, a_t, w_t in zip(d.chunk(T, 1), a.chunk(T, 1), w.chunk(T))]
        da = torch.cat([p[0] for p in parts], dim=1) if need_input else None
        return da, torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])


def _pair(v: Any) -> list[int]:
    return list(v) if isinstance(v, tuple | list) else [v, v]


class VmapKernel:
    """Batched gradients of any module by ``torch.func``: vmap(grad(loss)) over the tasks,
    ``loss(w) = cross_entropy(functional_call(module, params(w), x), y)``."""

    name = "vmap"

    def __init__(self, flat: FlatModel, x: torch.Tensor, y: torch.Tensor) -> None:
        from torch.func import functional_call, grad, vmap

        module = flat.module
        names = [name for name, p in module.named_parameters() if p.requires_grad]
        shapes, numels = flat.shapes, flat.numels
        self.size = flat.size
        self.x, self.y = x, y

        def loss(w: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            params = {n: v.view(s) for n, v, s in zip(names, torch.split(w, numels), shapes)}
            return F.cross_entropy(functional_call(module, params, (xb,)), yb)

        self._grad = vmap(grad(loss))

    def task_bytes(self, batch: int, itemsize: int) -> int:
        return itemsize * (4 * self.size + 8 * batch * self.x[0].numel())

    def __call__(self, W: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        T, B = idx.shape
        rows = idx.reshape(-1)
        x = self.x.index_select(0, rows).to(W.dtype)
        return self._grad(W, x.view(T, B, *x.shape[1:]), self.y.index_select(0, rows).view(T, B))


BUILTIN_KERNELS = {"dense": DenseKernel, "cnn": ConvKernel}


def make_kernel(kind: str | None, flat: FlatModel, x: torch.Tensor, y: torch.Tensor, w0: torch.Tensor
                ) -> tuple[Any, str | None]:
    """The batched kernel for the model, and why there is none (None when there is one).

    ``kind`` is the built-in kernel a registered model declares (``dense``, ``cnn``) or None
    (a user factory): then :class:`VmapKernel` if it runs on two tasks at ``w0``. The trial
    runs with torch's generator forked, so it draws nothing from the run's stream.
    """
    cls = BUILTIN_KERNELS.get(kind) if kind is not None else None
    if cls is not None and cls.fits(flat.module):
        return cls(flat, x, y), None
    try:
        kernel = VmapKernel(flat, x, y)
        devices = [w0.device.index or 0] if w0.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            kernel(torch.stack([w0, w0]), torch.zeros((2, 2), dtype=torch.int64, device=w0.device))
    except Exception as exc:  # noqa: BLE001 -- whatever vmap rejects, the sequential path handles
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return None, f"torch.func.vmap cannot batch this model ({type(exc).__name__}: {message[:160]})"
    return kernel, None


def expected_window(concurrency: int) -> float:
    """About how many tasks a window holds with C tasks in flight: sqrt(pi (C - 1) / 2), at
    least 1 (the mean number of draws before a repeat among C - 1 equally likely slots, a
    birthday-problem estimate for identical clients). On the heterogeneous network of
    benchmarks/bench_training.py the measured mean windows are about two thirds of it (2.7,
    5.8 and 7.5 for C = 10, 50 and 100)."""
    return max(1.0, math.sqrt(math.pi * (concurrency - 1) / 2))
