"""Fully-connected CRF (Krähenbühl & Koltun 2011) mean-field inference on the permutohedral lattice
(segops/ops/permutohedral.py): the fused softmax op (torch.ops.segops.dense_crf_softmax) and its autograd.Function,
one mean-field step as an autograd.Function (:class:`DenseCRFFunction`), and the functional and nn.Module front ends.
The softmax op's argument checks and fake kernel are in segops/ops/_dense_crf_meta.py."""

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from segops._fx import not_scriptable, one_fx_node
from segops.ops._autograd import (
    OpFunction,
    _needs_autograd,
    below_autograd,
    no_double_backward,
    register_function,
    register_no_derivative,
    save_for_backward_and_jvp,
)
from segops.ops._checks import accumulation_dtype, autocast_to, dtype_name, format_shape
from segops.ops._checks import check_tensor_arguments as _check_tensor_arguments
from segops.ops.permutohedral import PermutohedralLattice

__all__ = [
    "DEEPLAB_V2",
    "PYDENSECRF_DEFAULTS",
    "DenseCRF",
    "DenseCRFFunction",
    "crf_lattices",
    "crf_softmax",
    "dense_crf",
]

# pydensecrf's documented defaults (its README): addPairwiseGaussian(sxy=3, compat=3) and
# addPairwiseBilateral(sxy=80, srgb=13, compat=10).
PYDENSECRF_DEFAULTS = dict(
    smoothness_sxy=3.0, smoothness_weight=3.0, appearance_sxy=80.0, appearance_srgb=13.0, appearance_weight=10.0
)
# DeepLab v2 (ResNet-101, PASCAL VOC), the CRF settings its release used: pos_w 3, pos_xy_std 1, bi_w 4,
# bi_xy_std 67, bi_rgb_std 3, 10 iterations.
DEEPLAB_V2 = dict(
    num_iters=10,
    smoothness_sxy=1.0,
    smoothness_weight=3.0,
    appearance_sxy=67.0,
    appearance_srgb=3.0,
    appearance_weight=4.0,
)


# ------------------------------------------------------------------------------------------- the CRF softmax op


def _softmax_input_grad(out: Tensor, grad: Tensor) -> Tensor:
    """The gradient of softmax's input over the last dimension, given its output and the output's gradient; also
    its tangent, given the input's tangent (the Jacobian is symmetric)."""
    return out * (grad - (out * grad).sum(-1, keepdim=True))


class _CRFSoftmaxFunction(OpFunction):
    """dense_crf_softmax's derivatives, with its arguments as (unary, weights, *messages)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(unary, weights, *messages):
        return below_autograd(torch.ops.segops.dense_crf_softmax.default, unary, list(messages), weights)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _unary, weights, *messages = inputs
        save_for_backward_and_jvp(ctx, output, weights, *messages)

    @staticmethod
    def backward(ctx, grad):
        out, weights, *messages = ctx.saved_tensors
        grad_z = _softmax_input_grad(out, grad)
        grad_weights = None
        if ctx.needs_input_grad[1]:
            grad_weights = torch.stack([(grad_z * m).sum() for m in messages]) if messages else weights.new_zeros(0)
        grad_messages = [grad_z * weights[k] if ctx.needs_input_grad[2 + k] else None for k in range(len(messages))]
        return grad_z, grad_weights, *grad_messages

    @staticmethod
    def jvp(ctx, unary_tangent, weights_tangent, *message_tangents):
        out, weights, *messages = ctx.saved_tensors
        z_tangent = torch.zeros_like(out) if unary_tangent is None else unary_tangent
        for k, message in enumerate(messages):
            if weights_tangent is not None:
                z_tangent = z_tangent + weights_tangent[k] * message
            if message_tangents[k] is not None:
                z_tangent = z_tangent + weights[k] * message_tangents[k]
        return _softmax_input_grad(out, z_tangent)


register_function("dense_crf_softmax", _CRFSoftmaxFunction, to_function_args=lambda args: (args[0], args[2], *args[1]))


def crf_softmax(unary: Tensor, messages: Sequence[Tensor] = (), weights: Optional[Tensor] = None) -> Tensor:
    """``softmax(unary + sum_k weights[k] * messages[k], dim=-1)`` in one pass (torch.ops.segops.dense_crf_softmax):
    unary and each message Tensor[B, N, L], weights Tensor[K]. Differentiable (twice, through PyTorch ops)."""
    if weights is None:
        weights = unary.new_zeros(len(messages))
    if torch._C._are_functorch_transforms_active():
        return _CRFSoftmaxFunction.apply(unary, weights, *messages)
    return torch.ops.segops.dense_crf_softmax(unary, list(messages), weights)


# --------------------------------------------------------------------------------------------------- the CRF step


class _DenseCRFStep(torch.autograd.Function):
    """One mean-field step of a fully-connected CRF, given its (normalised) lattices.

    ``DenseCRFFunction.apply(unary, q, kernel_weights, compatibility, lattices)``.

    Args:
        unary (Tensor[B, N, L]): logits (higher = more likely).
        q (Tensor[B, N, L]): the current label distribution.
        kernel_weights (Tensor[K]): one weight per lattice.
        compatibility (Tensor[L, L] or None): the label compatibility mu (a penalty: mu[l, l'] for labels l and
            l' at two pixels); None is Potts, mu = 1 - I.
        lattices (tuple of K :class:`PermutohedralLattice`, normalised): the kernels.

    Returns ``softmax(unary - mu @ sum_k w_k filter_k(q))`` over labels, Tensor[B, N, L]. The backward is exact
    (it runs each filter's adjoint) with respect to unary, q, kernel_weights and compatibility; not twice
    differentiable (``create_graph=True`` raises).
    """

    @staticmethod
    def forward(ctx, unary, q, kernel_weights, compatibility, lattices):
        messages = [lattice.filter(q) for lattice in lattices]
        if compatibility is None:  # Potts: softmax(unary + sum_k w_k m_k), up to a per-pixel constant, fused
            out, total = crf_softmax(unary, messages, kernel_weights), None
        else:  # softmax(unary - (sum_k w_k m_k) @ mu^T)
            total = messages[0] * kernel_weights[0]
            for k in range(1, len(messages)):
                total = torch.addcmul(total, messages[k], kernel_weights[k])
            out = crf_softmax(unary - total @ compatibility.t())
        ctx.lattices = lattices
        ctx.potts = compatibility is None
        ctx.save_for_backward(out, total, kernel_weights, compatibility, *messages)
        ctx.save_for_forward(out, total, kernel_weights, compatibility, *messages)
        return out

    @staticmethod
    def backward(ctx, grad):
        # create_graph=True would otherwise get a silently constant (wrong) second derivative through this step.
        if torch.is_grad_enabled():
            no_double_backward(
                "DenseCRFFunction (a dense_crf mean-field step)",
                "it is differentiable once: its backward cannot build a graph (create_graph=True)",
            )
        out, total, kernel_weights, compatibility, *messages = ctx.saved_tensors
        grad = grad.contiguous()  # the caller's view of the output may be channels-last
        grad_z = _softmax_input_grad(out, grad)
        if ctx.potts:
            grad_total, grad_compatibility = grad_z, None
        else:
            # z = unary - total @ mu^T
            grad_total = -(grad_z @ compatibility)
            grad_compatibility = None
            if ctx.needs_input_grad[3]:
                flat = grad_z.reshape(-1, grad_z.shape[-1])
                grad_compatibility = -(flat.t() @ total.reshape(-1, total.shape[-1]))
        grad_weights = None
        if ctx.needs_input_grad[2]:
            grad_weights = torch.stack([(grad_total * m).sum() for m in messages])
        grad_q = None
        if ctx.needs_input_grad[1]:
            for k, lattice in enumerate(ctx.lattices):
                term = lattice.filter_adjoint(grad_total * kernel_weights[k])
                grad_q = term if grad_q is None else grad_q + term
        return grad_z, grad_q, grad_weights, grad_compatibility, None


def _refuse_torch_func(name: str) -> None:
    # The step keeps ctx in forward (its backward needs the messages the forward filtered), which torch.func rejects
    # with a message that names no op.
    if torch._C._are_functorch_transforms_active():
        raise RuntimeError(
            f"{name}: torch.func transforms (jvp, jacfwd, jacrev, vmap) are not supported; differentiate it with "
            f"torch.autograd (backward) or torch.autograd.forward_ad (forward mode)"
        )


class DenseCRFFunction(_DenseCRFStep):
    __doc__ = (
        _DenseCRFStep.__doc__
        + """
    Forward-mode AD (``torch.autograd.forward_ad``) gives the step's exact tangent; torch.func is refused by name.
    """
    )

    @classmethod
    def apply(cls, *args):
        _refuse_torch_func(cls.__name__)
        return super().apply(*args)

    @staticmethod
    def jvp(ctx, unary_tangent, q_tangent, weights_tangent, compatibility_tangent, _lattices_tangent):
        out, total, kernel_weights, compatibility, *messages = ctx.saved_tensors
        total_tangent = torch.zeros_like(out)
        for k, (lattice, message) in enumerate(zip(ctx.lattices, messages)):
            if weights_tangent is not None:
                total_tangent = total_tangent + weights_tangent[k] * message
            if q_tangent is not None:
                total_tangent = total_tangent + kernel_weights[k] * lattice.filter(q_tangent)
        if ctx.potts:  # z = unary + total, up to a per-pixel constant
            z_tangent = total_tangent
        else:  # z = unary - total @ mu^T
            z_tangent = -(total_tangent @ compatibility.t())
            if compatibility_tangent is not None:
                z_tangent = z_tangent - total @ compatibility_tangent.t()
        if unary_tangent is not None:
            z_tangent = z_tangent + unary_tangent
        return _softmax_input_grad(out, z_tangent)


# --------------------------------------------------------------------------------------------------- front ends


def _check_positive(name: str, value: float) -> None:
    # Comparisons (NaN fails both), not math.isfinite: torch.compile may trace a bandwidth as a SymFloat.
    if not (isinstance(value, (int, float, torch.SymInt, torch.SymFloat)) and 0 < value < math.inf):
        raise ValueError(f"dense_crf: {name} must be a finite number > 0, got {value!r}")


def crf_lattices(
    image: Tensor, smoothness_sxy: float, appearance_sxy: float, appearance_srgb: float
) -> tuple[PermutohedralLattice, PermutohedralLattice]:
    """The two normalised lattices of a dense CRF on images Tensor[B, 3, H, W] (uint8 or float in 0..255):
    smoothness (features x/sxy, y/sxy) and appearance (x/sxy, y/sxy, r/srgb, g/srgb, b/srgb), pydensecrf's
    features (x the column, y the row)."""
    _check_positive("smoothness_sxy", smoothness_sxy)
    _check_positive("appearance_sxy", appearance_sxy)
    _check_positive("appearance_srgb", appearance_srgb)
    batch, _, height, width = image.shape
    image = image.detach()  # the CRF is not differentiated with respect to the image (documented)
    dtype = torch.float64 if image.dtype == torch.float64 else torch.float32
    ys = torch.arange(height, device=image.device, dtype=dtype).view(height, 1).expand(height, width)
    xs = torch.arange(width, device=image.device, dtype=dtype).view(1, width).expand(height, width)
    position = torch.stack([xs, ys], dim=-1).reshape(1, height * width, 2).expand(batch, -1, -1)
    colour = image.to(dtype).permute(0, 2, 3, 1).reshape(batch, height * width, 3)
    smoothness = PermutohedralLattice.build((position / smoothness_sxy).contiguous())
    appearance = PermutohedralLattice.build(
        torch.cat([position / appearance_sxy, colour / appearance_srgb], dim=-1).contiguous()
    )
    return smoothness.normalized(), appearance.normalized()


def _check_crf_inputs(unary: Tensor, image: Tensor, num_iters: int) -> None:
    if unary.dim() != 4 or unary.shape[1] < 2:
        raise ValueError(f"dense_crf: unary must be [N, L, H, W] with L >= 2 labels, got shape {format_shape(unary)}")
    if unary.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dense_crf: unary must be float32 or float64, got {dtype_name(unary.dtype)}")
    expected = [unary.shape[0], 3, unary.shape[2], unary.shape[3]]
    if image.dim() != 4 or list(image.shape) != expected:
        raise ValueError(
            f"dense_crf: image must be [N, 3, H, W] = {format_shape(expected)} (unary's N, H, W), "
            f"got shape {format_shape(image)}"
        )
    if image.dtype not in (torch.uint8, torch.float32, torch.float64):
        raise ValueError(f"dense_crf: image must be uint8, float32 or float64 (0..255), got {dtype_name(image.dtype)}")
    if image.device != unary.device:
        raise ValueError(f"dense_crf: image must be on unary's device ({unary.device}), got {image.device}")
    if isinstance(num_iters, bool) or not isinstance(num_iters, int) or num_iters < 0:
        raise ValueError(f"dense_crf: num_iters must be an int >= 0, got {num_iters!r}")
    message = "dense_crf: unary must be finite (logits), got a NaN or infinite value"
    if unary.numel() == 0:
        return
    # min and max in one pass (NaN propagates): finite iff both are.
    if unary.device.type == "cpu" and not torch.compiler.is_compiling():
        low, high = torch.aminmax(unary)
        if not (math.isfinite(low.item()) and math.isfinite(high.item())):
            raise ValueError(message)
    else:  # no host synchronisation (CUDA: a device-side assert), nothing data-dependent in a compiled graph
        low, high = torch.aminmax(unary.reshape(-1), dim=0)  # with a dim, as ONNX's exporter needs
        torch._assert_async(torch.isfinite(high - low), message)


@one_fx_node  # FX (symbolic_trace, create_feature_extractor) records one call
def dense_crf(
    unary: Tensor,
    image: Tensor,
    num_iters: int = 5,
    *,
    smoothness_sxy: float = 3.0,
    smoothness_weight: Union[float, Tensor] = 3.0,
    appearance_sxy: float = 80.0,
    appearance_srgb: float = 13.0,
    appearance_weight: Union[float, Tensor] = 10.0,
    compatibility: Optional[Tensor] = None,
) -> Tensor:
    """Mean-field inference in a fully-connected CRF with Gaussian pairwise kernels (Krähenbühl & Koltun 2011).

    Two kernels: smoothness ``w_s exp(-|p_i - p_j|^2 / 2 sxy_s^2)`` and appearance ``w_a exp(-|p_i - p_j|^2 / 2
    sxy_a^2 - |I_i - I_j|^2 / 2 srgb^2)`` (p the pixel position, I its RGB colour), each filtered on a
    permutohedral lattice (O(N d L) per step) with pydensecrf's symmetric normalisation
    ``D^-1/2 K D^-1/2``, D the filtered constant image; as in pydensecrf the filter includes the pixel itself.
    The defaults are pydensecrf's documented ones; ``dense_crf(unary, image, **DEEPLAB_V2)`` uses DeepLab v2's.
    The lattices are built once per call and reused by every step and by the backward pass.

    Differentiable with respect to ``unary``, the kernel weights (pass 0-d tensors) and ``compatibility``; not
    with respect to the image or the bandwidths.

    Args:
        unary (Tensor[N, L, H, W]): logits, float32 or float64, finite, L >= 2 (pydensecrf's unary energy is
            their negative).
        image (Tensor[N, 3, H, W]): RGB, uint8 or float in 0..255.
        num_iters (int): mean-field steps (0 returns ``softmax(unary)``).
        smoothness_sxy, appearance_sxy (float): position bandwidths in pixels; appearance_srgb (float): colour
            bandwidth in intensity levels; all > 0.
        smoothness_weight, appearance_weight (float or 0-d Tensor): kernel weights.
        compatibility (Tensor[L, L], optional): label compatibility mu (a penalty); None is Potts (1 - I).

    Returns:
        Tensor[N, L, H, W]: label probabilities, contiguous.

    Under torch.autocast the whole mean field runs in float32 with autocast off (its policy: segops._autocast), so
    a float16/bfloat16 unary is accepted there and the output is float32.
    """
    if torch.is_autocast_enabled(unary.device.type):
        with torch.autocast(unary.device.type, enabled=False):
            return dense_crf(
                autocast_to(unary, torch.float32),
                image,
                num_iters,
                smoothness_sxy=smoothness_sxy,
                smoothness_weight=autocast_to(smoothness_weight, torch.float32),
                appearance_sxy=appearance_sxy,
                appearance_srgb=appearance_srgb,
                appearance_weight=autocast_to(appearance_weight, torch.float32),
                compatibility=autocast_to(compatibility, torch.float32),
            )
    _refuse_torch_func("dense_crf")
    _check_tensor_arguments("dense_crf", unary=unary, image=image, compatibility=compatibility)
    _check_crf_inputs(unary, image, num_iters)
    batch, labels, height, width = unary.shape
    if compatibility is not None and (
        compatibility.shape != (labels, labels)
        or compatibility.dtype != unary.dtype
        or compatibility.device != unary.device
    ):
        raise ValueError(
            f"dense_crf: compatibility must be [L, L] = [{labels}, {labels}] of unary's dtype and device "
            f"({dtype_name(unary.dtype)}, {unary.device}), got {format_shape(compatibility)} "
            f"{dtype_name(compatibility.dtype)} on {compatibility.device}"
        )
    # A Python float becomes a device tensor by a fill (new_full), not a blocking host-to-device copy.
    weights = torch.stack(
        [
            w.to(dtype=unary.dtype, device=unary.device) if isinstance(w, Tensor) else unary.new_full((), float(w))
            for w in (smoothness_weight, appearance_weight)
        ]
    )
    bandwidths = (smoothness_sxy, appearance_sxy, appearance_srgb)
    if batch > 1 and not torch.compiler.is_compiling():
        # An image at a time, on every device. On a GPU it bounds the memory: the GPU lattice sizes its vertex rows
        # at the bound H*W*(d+1) so that nothing waits for the vertex count, and a batch of 8 Cityscapes frames
        # would need over 20 GB at once (docs/design.md). On the CPU every op already runs each image on all cores,
        # and an image's working set (a few [H*W, L] tensors) stays warm in cache. A compiled graph takes the batch
        # whole.
        out = unary.new_empty(unary.shape)
        for b in range(batch):
            out[b : b + 1] = _mean_field(
                unary[b : b + 1], image[b : b + 1], num_iters, bandwidths, weights, compatibility
            )
        return out
    return _mean_field(unary, image, num_iters, bandwidths, weights, compatibility)


def _mean_field(
    unary: Tensor, image: Tensor, num_iters: int, bandwidths, weights: Tensor, compatibility: Optional[Tensor]
) -> Tensor:
    """dense_crf on checked arguments, the whole batch at once: bandwidths (smoothness sxy, appearance sxy,
    appearance srgb), weights Tensor[2] (smoothness, appearance)."""
    batch, labels, height, width = unary.shape
    lattices = crf_lattices(image.to(unary.dtype) if image.dtype != torch.uint8 else image, *bandwidths)
    lattices = tuple(lattice._replace(weights=lattice.weights.to(unary.dtype)) for lattice in lattices)
    # Pixel-major (channels-last), the layout the lattice filter and the softmax over labels want: one copy.
    logits = unary.permute(0, 2, 3, 1).contiguous().view(batch, height * width, labels)
    q = crf_softmax(logits)
    if _steps_fuse(logits, weights, compatibility) and num_iters > 0:
        lattice_lists = [list(tensors) for tensors in zip(*lattices)]  # one list per lattice field
        for _ in range(num_iters - 1):
            q = torch.ops.segops._dense_crf_step(logits, q, weights, *lattice_lists)
        # The last step writes [B, L, N]: the result's layout, without a transposing copy.
        q = torch.ops.segops._dense_crf_step(logits, q, weights, *lattice_lists, True)
        return q.view(batch, labels, height, width)
    # Dynamo traces no autograd.Function with a jvp: a compiled graph takes the step without it.
    step = _DenseCRFStep if torch.compiler.is_compiling() else DenseCRFFunction
    for _ in range(num_iters):
        q = step.apply(logits, q, weights, compatibility, lattices)
    # Contiguous, not a channels-last view: some PyTorch losses' CPU backwards (nll_loss2d) reject the latter.
    return q.view(batch, height, width, labels).permute(0, 3, 1, 2).contiguous()


register_no_derivative(
    "_dense_crf_step", "dense_crf runs it only where no gradient is wanted, and DenseCRFFunction's steps otherwise"
)


def _steps_fuse(logits: Tensor, weights: Tensor, compatibility: Optional[Tensor]) -> bool:
    """Whether the mean-field steps run as torch.ops.segops._dense_crf_step, each step's messages never stored (the
    same bits as DenseCRFFunction's forward): on the CPU, which has its kernel; with Potts compatibility; in eager
    mode; and where nothing wants a derivative (the op has none)."""
    return (
        compatibility is None
        and logits.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and not _needs_autograd((logits, weights))
    )


@one_fx_node  # one node under FX: the dtype below is not known while tracing
def _dense_crf_with_parameters(
    unary: Tensor,
    image: Tensor,
    num_iters: int,
    kernel_weights: Tensor,
    compatibility: Optional[Tensor],
    smoothness_sxy: float,
    appearance_sxy: float,
    appearance_srgb: float,
) -> Tensor:
    """dense_crf with DenseCRF's learned parameters in the accumulation dtype, not unary's: under autocast a
    bfloat16 unary runs in float32 (dense_crf), and the parameters must not be rounded to bfloat16 on the way."""
    dtype = accumulation_dtype(unary.dtype)
    weights = kernel_weights.to(dtype)
    return dense_crf(
        unary,
        image,
        num_iters,
        smoothness_sxy=smoothness_sxy,
        smoothness_weight=weights[0],
        appearance_sxy=appearance_sxy,
        appearance_srgb=appearance_srgb,
        appearance_weight=weights[1],
        compatibility=None if compatibility is None else compatibility.to(dtype),
    )


class DenseCRF(nn.Module):
    """A fully-connected CRF as a layer (CRF-as-RNN): :func:`dense_crf` with learnable kernel weights and label
    compatibility, ``DenseCRF(num_labels)(unary, image)``.

    Args:
        num_labels (int): L >= 2.
        num_iters (int): mean-field steps.
        test_iters (int, optional): mean-field steps in eval mode, where they differ (CRF-as-RNN: 5 in training, 10
            at test); None: num_iters.
        smoothness_sxy, appearance_sxy, appearance_srgb (float): bandwidths (fixed).
        smoothness_weight, appearance_weight (float): initial kernel weights (``kernel_weights``, a parameter).
        learn_compatibility (bool): learn an L x L ``compatibility`` initialised to Potts (1 - I); otherwise Potts.

    Shapes: unary Tensor[N, L, H, W] (logits) and image Tensor[N, 3, H, W] (0..255) give Tensor[N, L, H, W].
    :meth:`DenseCRF.deeplab` builds one with DeepLab v2's settings.
    """

    def __init__(
        self,
        num_labels: int,
        num_iters: int = 5,
        smoothness_sxy: float = 3.0,
        smoothness_weight: float = 3.0,
        appearance_sxy: float = 80.0,
        appearance_srgb: float = 13.0,
        appearance_weight: float = 10.0,
        learn_compatibility: bool = True,
        test_iters: Optional[int] = None,
    ):
        super().__init__()
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 2:
            raise ValueError(f"DenseCRF: num_labels must be an int >= 2, got {num_labels!r}")
        for name, value in (("num_iters", num_iters), ("test_iters", num_iters if test_iters is None else test_iters)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"DenseCRF: {name} must be an int >= 0, got {value!r}")
        for name, value in (
            ("smoothness_sxy", smoothness_sxy),
            ("appearance_sxy", appearance_sxy),
            ("appearance_srgb", appearance_srgb),
        ):
            _check_positive(name, value)
        self.num_labels, self.num_iters = num_labels, num_iters
        self.test_iters = num_iters if test_iters is None else test_iters
        self.smoothness_sxy, self.appearance_sxy, self.appearance_srgb = smoothness_sxy, appearance_sxy, appearance_srgb
        self.kernel_weights = nn.Parameter(torch.tensor([float(smoothness_weight), float(appearance_weight)]))
        self.compatibility = nn.Parameter(1.0 - torch.eye(num_labels)) if learn_compatibility else None

    @classmethod
    def deeplab(cls, num_labels: int, learn_compatibility: bool = False) -> "DenseCRF":
        """DeepLab v2's CRF (10 steps; smoothness sxy 1, weight 3; appearance sxy 67, srgb 3, weight 4)."""
        return cls(num_labels, learn_compatibility=learn_compatibility, **DEEPLAB_V2)

    def __prepare_scriptable__(self):
        not_scriptable(type(self).__name__)

    def forward(self, unary: Tensor, image: Tensor) -> Tensor:
        return _dense_crf_with_parameters(
            unary,
            image,
            self.num_iters if self.training else self.test_iters,
            self.kernel_weights,
            self.compatibility,
            self.smoothness_sxy,
            self.appearance_sxy,
            self.appearance_srgb,
        )

    def extra_repr(self) -> str:
        return (
            f"num_labels={self.num_labels}, num_iters={self.num_iters}, test_iters={self.test_iters}, "
            f"smoothness_sxy={self.smoothness_sxy}, "
            f"appearance_sxy={self.appearance_sxy}, appearance_srgb={self.appearance_srgb}, "
            f"compatibility={'learned' if self.compatibility is not None else 'Potts'}"
        )
